"""The trainer's forward + backward + grad reduction as CUDA graphs (``train.cuda_graph``).

:class:`TrainerGraphs` wraps the trainer's Megatron schedule call in a
:class:`~mugv_dit.optim.graphed_step.GraphedStep`, one graph per step layout (per micro-batch:
latent shape, text lengths, pixel size, samples), and leaves the rest of the step eager: the
loss is read on the host (the non-finite check decides whether the optimizer steps at all),
then the optimizer (:class:`~mugv_dit.optim.sync_free_step.SyncFreeStep` or Megatron's), the
EMA, logging. Megatron-Core's full-iteration graph makes the same cut
(``FullCudaGraphWrapper`` wraps ``forward_backward_func`` only).

What moves out of the captured region, so that it holds no host synchronisation and no
pageable host-to-device copy: the step's tensors are copied into per-layout static buffers
(noisy latents, sigma, target, noisy-frame mask, fps, the packed text tokens and its
``cu_seqlens``), and the loss scale (it depends on the step's count of noisy elements) is a
device scalar. The model's RoPE table cache is kept alive with each graph (a replay reads the
tables' captured addresses; the cache drops entries after eight other shapes). A step with a dropped caption runs eagerly: the
model swaps in the learned null caption by re-packing the text (host work and a copy inside
the forward). Numerics: the replay launches the eager step's kernels, so the loss and the
gradients are the eager ones (bit for bit where the kernels are deterministic).

Where it applies (:func:`why_not`): CUDA, no pipeline / tensor / context parallelism (their
collectives and P2P exchanges are not verified under capture yet), no full recompute
(checkpointing stashes RNG state on the host), no LoRA. Otherwise the trainer logs why and
stays eager. The default ``auto`` (:func:`resolve`) graphs only where the graphs were measured
exact (one CUDA device) and is silent on the CPU. Megatron's DDP must be built under
:func:`~mugv_dit.optim.graphed_step.on_capture_stream` (the trainer does when asked for graphs).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable

import torch

from mugv_dit.diffusion.prepare import CleanBatch, TrainInputs
from mugv_dit.model import PackedText
from mugv_dit.optim.graphed_step import GraphedStep

log = logging.getLogger(__name__)

#: per micro-batch: noisy latents, sigma, target, noisy-frame mask, fps, packed text tokens,
#: packed text cu_seqlens
_PER_MICRO_BATCH = 7


def why_not(cfg, device: torch.device, sizes: dict[str, int]) -> str | None:
    """``None`` when the trainer's forward+backward can be graphed, else the reason."""
    if device.type != "cuda":
        return f"device {device.type} (CUDA graphs need CUDA)"
    busy = [f"{k}={v}" for k, v in sizes.items() if v > 1]
    if busy:
        return f"parallelism {', '.join(busy)} (graphs: data parallel only, for now)"
    if cfg.runtime.recompute == "full":
        return "runtime.recompute=full"
    if cfg.lora is not None:
        return "LoRA"
    return None


def resolve(mode, cfg, device: torch.device, sizes: dict[str, int]) -> tuple[bool, str | None]:
    """``train.cuda_graph`` (``True`` / ``False`` / ``"auto"``) -> (graph the steps?, the line
    to log once, or ``None``).

    ``auto`` (the default) graphs where it was measured exact: one CUDA device, nothing but
    data parallelism of size 1 (bit-equal losses and a faster step on an H100, 2026-12-07);
    elsewhere on CUDA it stays eager and says why, and on the CPU it stays eager silently
    (CPU runs print and compute exactly what they did before). ``True`` asks for graphs on
    any layout :func:`why_not` allows (data parallel > 1 included: not verified on GPUs
    yet) and says why not where it cannot. ``sizes``: the run's parallel sizes by name."""
    if mode is False:
        return False, None
    if mode not in (True, "auto"):
        raise ValueError(f"train.cuda_graph must be true, false or 'auto', got {mode!r}")
    blocker = why_not(cfg, device, {k: v for k, v in sizes.items() if k != "data_parallel"})
    if blocker is None and mode == "auto" and sizes.get("data_parallel", 1) > 1:
        blocker = (
            f"data_parallel={sizes['data_parallel']}: graphs with data parallelism are not "
            "verified on GPUs yet (set train.cuda_graph=true to graph anyway)"
        )
    if blocker is None:
        return True, None
    if mode == "auto" and device.type != "cuda":
        return False, None
    return False, f"train.cuda_graph={str(mode).lower()}: eager steps ({blocker})"


class TrainerGraphs:
    """``graphs(prepared, scale)`` -> the step's summed squared error (float64 device scalar)
    from a replayed graph, or ``None`` when this step must run eagerly (a dropped caption).
    ``run(items, scale)`` is the trainer's schedule call over ``(batch, inputs, text)`` items
    (see :meth:`mugv_dit.trainer.Trainer.schedule_sse`)."""

    def __init__(
        self,
        run: Callable[[list, torch.Tensor], torch.Tensor],
        device: torch.device,
        *,
        model: torch.nn.Module | None = None,
        warmup: int = 2,
        max_graphs: int = 4,
        reset: Callable[[], None] | None = None,
        backend=None,
    ) -> None:
        self.run = run
        self.device = device
        self.graphed = GraphedStep(
            self._step,
            warmup=warmup,
            max_graphs=max_graphs,
            reset=reset,
            keepalive=None if model is None else lambda: self._caches(model),
            backend=backend,
        )
        self.eager_steps = 0  # steps run eagerly because of a dropped caption
        self._layout: tuple = ()

    @staticmethod
    def _caches(model: torch.nn.Module) -> list:
        """Device tensors the model caches between steps (its RoPE tables, dropped from the
        cache after eight other shapes): a graph keeps those it may read alive."""
        return [dict(m.__dict__.get("_rope_cache", {})) for m in model.modules()]

    @property
    def failure(self):
        return self.graphed.failure

    def __call__(self, prepared: list, scale: float) -> torch.Tensor | None:
        if self.graphed.failure is not None:
            return None
        if any(
            inputs.drop_caption_B is not None and bool(inputs.drop_caption_B.any())
            for _, inputs in prepared
        ):  # a CPU tensor (prepare_inputs): no device sync
            self.eager_steps += 1
            return None
        flat, layout = [], []
        for batch, inputs in prepared:
            lengths = tuple(int(t.shape[0]) for t in batch.texts)
            offsets = (0, *torch.tensor(lengths).cumsum(0).tolist())
            tokens = batch.texts[0] if len(batch.texts) == 1 else torch.cat(batch.texts)
            flat += [
                inputs.noisy_BCTHW,
                inputs.sigma_B.to(self.device),
                inputs.target_BCTHW,
                inputs.noisy_frames_BT.to(self.device),
                batch.fps_B.to(self.device),
                tokens,
                torch.tensor(offsets, dtype=torch.int32).to(self.device),  # not in the graph
            ]
            layout.append((offsets, batch.height_px, batch.width_px, len(batch.keys)))
        key = tuple(layout)
        flat.append(torch.full((), scale, dtype=torch.float32, device=self.device))
        self._layout = key
        out = self.graphed(*flat, key=key)
        if self.graphed.failure is not None:
            return out  # the failed capture's step, run eagerly by GraphedStep (same numerics)
        return out.clone()  # the graph's output buffer is refilled by the next replay

    def _step(self, *static: torch.Tensor) -> torch.Tensor:
        """The schedule over the static buffers of the current layout."""
        items = []
        for i, (offsets, height, width, n) in enumerate(self._layout):
            noisy, sigma, target, noisy_frames, fps, tokens, cu = static[
                _PER_MICRO_BATCH * i : _PER_MICRO_BATCH * (i + 1)
            ]
            max_len = max(hi - lo for lo, hi in itertools.pairwise(offsets))
            text = PackedText(tokens, cu, max_len, offsets)
            batch = CleanBatch(noisy, [], fps, height, width, [""] * n)
            inputs = TrainInputs(noisy, sigma, target, noisy_frames, None, [])
            items.append((batch, inputs, text))
        return self.run(items, static[-1])
