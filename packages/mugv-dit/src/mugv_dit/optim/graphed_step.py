"""A whole training step (forward, backward, grad reduction, optimizer) replayed as one CUDA graph.

At a fixed bucket shape a step launches the same kernels every time; eager PyTorch spends host
time on each launch (and Megatron's hooks add Python per parameter), so at 12.9k tokens the GPU
idles for part of every step. :class:`GraphedStep` runs a step callable a few times on a side
stream (warm-up: kernel compilation, autotuning, lazily created optimizer state), captures one
call into a :class:`torch.cuda.CUDAGraph`, and from then on replays it. The callable must:

* read its inputs from tensors whose storage stays put (copy each new batch into them with
  :meth:`GraphedStep.copy_inputs`); shapes are fixed, so one graph serves one bucket;
* make no host synchronisation (``.item()``, ``.cpu()``, data-dependent shapes): the
  optimizer must be :class:`~mugv_dit.optim.sync_free_step.SyncFreeStep` over torch's fused
  AdamW, whose step count, grad scale and non-finite check stay on the device;
* keep its per-step host-side values on the device: :func:`capturable_adam` makes the learning
  rate a device tensor that :meth:`GraphedStep.set_lr` fills before each replay.

The replayed step launches exactly the captured kernels on the same memory, so its numerics are
the eager step's (bit for bit on a deterministic kernel set); what changes is host time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mugv_dit.optim.fused_adam import _torch_adams


def capturable_adam(optimizer) -> list[torch.Tensor]:
    """Make every torch Adam/AdamW inside ``optimizer`` safe to capture: ``capturable=True``
    (step counts on the device) and a 0-dim float32 device tensor as each group's ``lr``.
    Returns the lr tensors (fill them to change the learning rate of a replayed step)."""
    lrs = []
    for adam in _torch_adams(optimizer):
        for group in adam.param_groups:
            if not group.get("fused"):
                raise ValueError("capturing the optimizer step needs torch's fused AdamW")
            device = group["params"][0].device
            lr = group["lr"]
            if not isinstance(lr, torch.Tensor):
                lr = torch.tensor(float(lr), dtype=torch.float32, device=device)
            group["lr"], group["capturable"] = lr, True
            lrs.append(lr)
        for state in adam.state.values():
            step = state.get("step")
            if isinstance(step, torch.Tensor) and step.device.type == "cpu":
                state["step"] = step.to(device=next(iter(adam.param_groups))["params"][0].device)
    return lrs


class GraphedStep:
    """Replay ``step_fn`` (no arguments) as one CUDA graph after ``warmup`` eager calls."""

    def __init__(self, step_fn: Callable[[], object], *, warmup: int = 3) -> None:
        if warmup < 1:
            raise ValueError("warmup must be >= 1 (the first eager call builds lazy state)")
        self.step_fn = step_fn
        self.warmup = warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.output: object = None
        self._lrs: list[torch.Tensor] = []
        self._eager_calls = 0

    def bind_lr(self, lr_tensors: list[torch.Tensor]) -> None:
        self._lrs = list(lr_tensors)

    def set_lr(self, lr: float) -> None:
        for t in self._lrs:
            t.fill_(lr)

    @staticmethod
    def copy_inputs(pairs) -> None:
        """``static.copy_(new)`` for each ``(static, new)`` pair (same shape and dtype)."""
        for static, new in pairs:
            if static.shape != new.shape:
                raise ValueError(
                    f"a graphed step's input changed shape {tuple(static.shape)} -> "
                    f"{tuple(new.shape)}: one graph serves one bucket"
                )
            static.copy_(new, non_blocking=True)

    def _capture(self) -> None:
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.output = self.step_fn()
        self.graph = graph

    def __call__(self) -> object:
        """One step: the first ``warmup`` calls run eagerly on a side stream (as capture
        requires), the next captures the step (capture records, it does not run) and every
        call from then on replays it. Each call is exactly one step."""
        if self.graph is None:
            if self._eager_calls < self.warmup:
                self._eager_calls += 1
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    out = self.step_fn()
                torch.cuda.current_stream().wait_stream(side)
                return out
            self._capture()
        self.graph.replay()
        return self.output
