"""The pre-training loop: Megatron DDP + (distributed) optimizer over a curriculum of stages.

Build order (``Trainer.__init__``, one named ``_build_*`` step each): process groups ->
model (same seed on every rank; with ``lora`` its base frozen and adapters added, so only
they get grad buffers and optimizer state) -> Megatron DDP wrapper -> Megatron optimizer
(``optim/``, with the LR schedule) -> EMA copy -> data index + sampler -> resume from the
latest checkpoint (or ``train.init_from``) -> logs.
The trainer checkpoints only its own counters (step, sampler cursors); model, EMA and
optimizer checkpoint themselves through their sharded state dicts.

Every objective (the pre-training flow loss here; mugv-align's SFT / Flow-DPO / Flow-KTO)
runs through the same two calls: :meth:`Trainer.schedule`, the one call of Megatron's
forward-backward schedule (the objective supplies the per-micro-batch forward and loss
function), and :meth:`Trainer.apply_step`, the one optimizer step (LR, zero-grad, the
objective's forward/backward, non-finite handling, optimizer step, EMA); step-wide sums go
through :meth:`Trainer.sum_over_step` (the pipeline, then the DP group the trainer holds).
Public hooks for trainers built on this one (mugv-align's ``AlignTrainer``), each documented
where it is defined: :meth:`Trainer.train_step` (one step of an objective: override to train
another, call ``super().train_step`` for the pre-training step), :meth:`Trainer.update_ema`
(fold the weights into the EMA after a successful optimizer step: override for another
averaging scheme), :meth:`Trainer.save` and :meth:`Trainer.trainer_state`.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import ExitStack
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,
)
from megatron.core.pipeline_parallel import get_forward_backward_func
from mugv_formats import atomic_write_text
from mugv_formats.atomic import open_append_nofollow, refuse_symlink
from mugv_formats.outputs import output_lock

from mugv_dit.build import build_model
from mugv_dit.checkpoint import (
    CheckpointSaver,
    clean_partial_checkpoints,
    latest_checkpoint,
    load_checkpoint,
)
from mugv_dit.config import RunConfig, StageConfig, dump_config
from mugv_dit.data.plan import BucketSampler, LatentIndex, collate, tokens_of
from mugv_dit.diffusion.loss import (
    masked_velocity_sse,
    micro_batch_loss_scale,
    noisy_element_count,
    step_loss,
)
from mugv_dit.diffusion.prepare import micro_batch_seed, prepare_inputs
from mugv_dit.flops import train_step_flops
from mugv_dit.interop.export import architecture_differences, load_export, load_full_state_dict
from mugv_dit.lora.adapters import adapter_copy, apply_lora, lora_dtype
from mugv_dit.megatron_patches.cuda_on_cpu import cpu_megatron
from mugv_dit.model import MUGDiT, PackedText
from mugv_dit.optim import graphed_forward_backward
from mugv_dit.optim.fused_adam import keep_adam_kernel
from mugv_dit.optim.graphed_step import on_capture_stream, step_phase
from mugv_dit.optim.master import (
    PendingShards,
    compute_dtype,
    lerp_to_masters_,
    master_params,
    sync_sharded_,
)
from mugv_dit.optim.optimizer import build_optimizer, set_lr, stage_lr
from mugv_dit.parallel import (
    default_device,
    destroy_distributed,
    init_distributed,
    parallel_context,
)
from mugv_dit.samples import write_sample_export


class NonFiniteError(RuntimeError):
    """A NaN/Inf loss or gradient with ``train.nonfinite=stop`` (or too many skips)."""


def stage_at(
    curriculum: list[StageConfig], step: int, steps: list[int] | None = None
) -> tuple[int, StageConfig, int]:
    """(stage index, stage, step within the stage) of a global step; ``steps`` (default:
    each stage's ``steps``) are the stages' lengths, shorter for a stage that ended early
    (``advance_on_plateau``)."""
    start = 0
    for i, stage in enumerate(curriculum):
        n = stage.steps if steps is None else steps[i]
        if step < start + n:
            return i, stage, step - start
        start += n
    raise ValueError(f"step {step} is past the curriculum ({start} steps)")


def tensorboard_writer_class():
    """``torch.utils.tensorboard.SummaryWriter``, imported only when a run logs to TensorBoard
    (tensorboard is the ``train`` extra; inference and export need none of it)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ImportError(
            f"train.tensorboard=true needs tensorboard, which is not installed ({e}): install "
            "mugv-dit[train], or set train.tensorboard=false (metrics.jsonl is written either way)"
        ) from None
    return SummaryWriter


def _trim_metrics(path: Path, step: int) -> None:
    """Drop the log lines of steps >= ``step`` (re-run after a resume; a killed run may also
    leave a torn last line), so ``metrics.jsonl`` holds each step of the curve once."""
    refuse_symlink(path, "metrics file")  # never read or rewrite a file outside the run
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", step) < step:
            kept.append(line + "\n")
    atomic_write_text(path, "".join(kept))


class Trainer:
    """Runs a RunConfig to completion, resuming from its output directory when possible."""

    #: folders the run writes into: a symbolic link planted at one is refused at start
    run_folder_entries: tuple[str, ...] = ("checkpoints", "tensorboard")

    def __init__(self, cfg: RunConfig, *, micro_batches_per_step: int | None = None):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.ckpt_root = self.out / "checkpoints"
        self.stack = ExitStack()
        # the trainer's own counters: all it checkpoints itself (with the sampler cursors)
        self.step = 0
        self.skipped = 0
        self.last_saved_step = -1
        # built in this order (the model's init draws from the seeded global RNG, then EMA's)
        try:
            self._build_process_groups(micro_batches_per_step)
            model = self._build_model()
            self._build_ddp(model)
            self._build_optimizer()
            self._build_ema(model)
            self._build_data()
            self._build_validation()
            self._resume()
            self._open_logs()
        except BaseException:
            self.stack.close()  # the output lock and the CPU shim go with a failed start
            raise

    # -- build steps (called once, in the order of __init__) ----------------------------------
    def _build_process_groups(self, micro_batches_per_step: int | None) -> None:
        """torch.distributed + Megatron groups (torchrun env or a single local process), this
        rank's device, DP coordinates and the model's parallel context."""
        par = self.cfg.parallel
        init_distributed(
            par.tensor_parallel,
            par.backend,
            pipeline_parallel=par.pipeline_parallel,
            context_parallel=par.context_parallel,
        )
        self.shim = self.stack.enter_context(cpu_megatron())
        self.device = default_device()
        self.rank = dist.get_rank()
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.dp_size = parallel_state.get_data_parallel_world_size()
        self.dp_group = parallel_state.get_data_parallel_group()  # without CP ranks
        self.dp_cp_rank = parallel_state.get_data_parallel_rank(with_context_parallel=True)
        self.pp_group = parallel_state.get_pipeline_model_parallel_group()
        self.pp_size = par.pipeline_parallel
        self.parallel = parallel_context()
        self.micro_batches = micro_batches_per_step or self.dp_size
        if self.micro_batches % self.dp_size:
            raise ValueError(
                f"micro_batches_per_step={self.micro_batches} not divisible by DP={self.dp_size}"
            )
        self.dtype = compute_dtype(self.cfg.train.bf16, self.device)
        self.bf16 = self.dtype == torch.bfloat16
        self._claim_output()

    def _claim_output(self) -> None:
        """Rank 0 holds the output folder's advisory lock for the whole run (a second run on
        it is refused, naming the holder) and removes what an interrupted checkpoint save
        left there (:func:`clean_partial_checkpoints`: our own names only). A run folder
        that is a file, cannot be created or is not writable is a one-line error."""
        if self.rank == 0:
            self.stack.enter_context(output_lock(self.out, "output_dir"))
            for name in self.run_folder_entries:
                refuse_symlink(self.out / name, "run folder entry")
            clean_partial_checkpoints(self.ckpt_root)
        dist.barrier()

    def _build_model(self) -> MUGDiT:
        """The model: identical seed on every rank -> identical replicated params, and
        TP-invariant init of the parallel linears (CPU master weights, then split)."""
        cfg = self.cfg
        torch.manual_seed(cfg.train.seed)
        model = build_model(
            cfg.model,
            dtype=self.dtype,
            layout=self.parallel,
            runtime=cfg.runtime,
            sequence_parallel=cfg.parallel.sequence_parallel,
        )
        self.tcfg = model.config
        if cfg.lora is not None:  # freeze the base; only adapters reach DDP and the optimizer
            apply_lora(model, cfg.lora, dtype=lora_dtype(cfg.lora, self.dtype))
        return model.to(self.device)

    def _build_ddp(self, model: MUGDiT) -> None:
        """Megatron DDP (grad buffers, bucketed reduce-scatter / all-reduce) and the hooks of
        Megatron's forward-backward schedules: no grad sync until the last micro-batch, then
        DP reduce + TP (sequence parallel) + PP (conditioning) reductions."""
        par = self.cfg.parallel
        ddp_cfg = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=par.overlap_grad_reduce,
            overlap_param_gather=par.overlap_param_gather,
            use_distributed_optimizer=par.distributed_optimizer,
            check_for_nan_in_grad=False,
        )
        self.graphs = None
        sizes = {
            "pipeline_parallel": self.pp_size,
            "tensor_parallel": par.tensor_parallel,
            "context_parallel": par.context_parallel,
            "data_parallel": self.dp_size,
        }
        graphed, note = graphed_forward_backward.resolve(
            self.cfg.train.cuda_graph, self.cfg, self.device, sizes
        )
        if note is not None and self.rank == 0:
            print(note, flush=True)
        # graphed steps need DDP's AccumulateGrad nodes on the capture stream (graphed_step)
        with on_capture_stream(graphed):
            self.model = DistributedDataParallel(self.tcfg, ddp_cfg, model)
        self.tcfg.no_sync_func = self.model.no_sync
        self.tcfg.finalize_model_grads_func = finalize_model_grads
        if graphed:

            def reset() -> None:  # what an aborted capture may leave behind
                for p in model.parameters():
                    p.grad = None

            self.graphs = graphed_forward_backward.TrainerGraphs(
                self.schedule_sse, self.device, model=model, reset=reset
            )

    def _build_optimizer(self) -> None:
        """Megatron's (distributed) Adam, fp32 main params when bf16, and what steps it (the
        sync-free wrapper or the optimizer itself; see optim/optimizer.py)."""
        self.optimizer, self.stepper = build_optimizer(
            self.cfg, self.model, bf16=self.bf16, dtype=self.dtype, device=self.device
        )

    def _build_ema(self, model: MUGDiT) -> None:
        """EMA: an fp32 copy with the same TP sharding (checkpoints through the same path) of
        the optimizer's fp32 master weights (:meth:`update_ema`); at the start they equal
        the model's weights."""
        cfg = self.cfg
        self.ema = None
        # EMA parameters updated shard-wise (distributed optimizer) since the last sync_ema
        self.ema_pending: PendingShards = {}
        if cfg.train.ema_decay is None:
            return
        if cfg.lora is not None:  # adapters only: the frozen base's EMA is the base itself
            self.ema = adapter_copy(model, torch.float32)
            return
        ema = build_model(cfg.model, layout=self.parallel, runtime=cfg.runtime)
        self.ema = ema.to(self.device).requires_grad_(False)
        with torch.no_grad():
            for p_ema, p in zip(self.ema.parameters(), model.parameters()):
                p_ema.copy_(p.float())

    def _build_data(self) -> None:
        """The latent index (checked against the model and data.vae_checkpoint_id), the
        step-plan sampler, the energon loader if chosen, and the checkpoint saver."""
        cfg = self.cfg
        if cfg.data.path is None:
            raise ValueError("data.path is not set (use --set data.path=DIR)")
        self.index = LatentIndex(cfg.data.path)
        if self.index.header.text_dim != cfg.model.text_dim:
            raise ValueError(
                f"dataset text_dim={self.index.header.text_dim} != model.text_dim={cfg.model.text_dim}"
            )
        if self.index.header.latent_channels != cfg.model.in_channels:
            raise ValueError(
                f"dataset latent_channels={self.index.header.latent_channels} != "
                f"model.in_channels={cfg.model.in_channels}"
            )
        vae_id = self.index.header.vae_checkpoint_id
        if cfg.data.vae_checkpoint_id is not None and vae_id != cfg.data.vae_checkpoint_id:
            raise ValueError(
                f"{cfg.data.path}: latents made by VAE {vae_id!r}, but "
                f"data.vae_checkpoint_id={cfg.data.vae_checkpoint_id!r}"
            )
        self.sampler = BucketSampler(
            self.index,
            tokens_per_batch=cfg.data.tokens_per_batch,
            max_batch_size=cfg.data.max_batch_size,
            micro_batches_per_step=self.micro_batches,
            patch=cfg.model.patch_size,
            seed=cfg.data.seed,
            weighted=cfg.data.weighted_sampling,
        )
        self.energon = None
        if cfg.data.loader == "energon":
            from mugv_dit.data.energon import EnergonLatentLoader

            self.energon = EnergonLatentLoader(
                cfg.data.path,
                index=self.index,
                sampler=self.sampler,
                dp_rank=self.dp_rank,
                dp_size=self.dp_size,
                dp_group=self.dp_group,
                num_workers=cfg.data.num_workers,
                seed=cfg.data.seed,
            )
        self.saver = CheckpointSaver(
            self.ckpt_root,
            async_save=cfg.train.async_save and self.device.type == "cuda",
            keep=cfg.train.keep_checkpoints,
        )

    def _build_validation(self) -> None:
        """The held-out validation set (``validation.path``; mugv_dit.validation) and the
        stages' lengths, which ``advance_on_plateau`` may shorten (both checkpointed)."""
        from mugv_dit.validation import PlateauTracker, Validator

        self.stage_steps = [s.steps for s in self.cfg.curriculum]
        self.validator = Validator(self.cfg) if self.cfg.validation.path is not None else None
        self.plateau = PlateauTracker()
        self.validations: list[dict] = []  # {"steps_done", metrics...}, checkpointed

    def _resume(self) -> None:
        """Resume from the latest checkpoint, else start from train.init_from if set."""
        cfg = self.cfg
        ckpt = latest_checkpoint(self.ckpt_root)
        if ckpt is None:
            if cfg.train.init_from is not None:
                self._init_from_export(cfg.train.init_from)
            return
        restore_kernel = keep_adam_kernel(self.optimizer)
        state = load_checkpoint(ckpt, self.model.module, self.ema, self.optimizer)
        restore_kernel()  # this run's train.fused_adam, not the checkpoint's
        self.step = int(state["step"])
        self.last_saved_step = self.step
        self.skipped = int(state.get("skipped", 0))
        # the VAE the run started on (absent in checkpoints written before this check)
        started_on = state.get("vae_checkpoint_id")
        vae_id = self.index.header.vae_checkpoint_id
        if started_on is not None and started_on != vae_id:
            raise ValueError(
                f"{ckpt}: this run trained on latents of VAE {started_on!r}, but "
                f"{cfg.data.path} holds latents of VAE {vae_id!r}; resuming would mix "
                "latent spaces (start a new run, or point data.path at the original latents)"
            )
        self.sampler.load_state_dict(state["sampler"])
        if "validation" in state:
            val = state["validation"]
            self.stage_steps = [int(n) for n in val["stage_steps"]]
            self.plateau.load_state_dict(val["plateau"])
            self.validations = list(val["history"])
        if self.energon is not None:
            self.energon.restore(ckpt / "energon" / f"rank_{self.rank:05d}.pt")

    def _open_logs(self) -> None:
        """Rank 0: resolved_config.yaml, metrics.jsonl trimmed to the resumed step, and
        TensorBoard unless ``train.tensorboard`` is false."""
        self.writer = None
        if self.rank != 0:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / "resolved_config.yaml", dump_config(self.cfg))
        _trim_metrics(self.out / "metrics.jsonl", self.step)
        if not self.cfg.train.tensorboard:
            return
        SummaryWriter = tensorboard_writer_class()
        # scalars are logged at step + 1: drop those of steps re-run after a resume
        self.writer = SummaryWriter(
            str(self.out / "tensorboard"), purge_step=self.step + 1 if self.step else None
        )

    def _init_from_export(self, path: str) -> None:
        """Start from exported weights (e.g. the imported release or a widened model)."""
        model_cfg, state = load_export(path)
        differences = architecture_differences(model_cfg, self.cfg.model)
        if differences:
            raise ValueError(
                f"train.init_from={path}: its model config differs from this run's: "
                + ", ".join(differences)
            )
        load_full_state_dict(self.model.module, state)
        if self.ema is not None:
            load_full_state_dict(self.ema, state)
        # the optimizer's fp32 main params were copied at construction: refresh them
        self.optimizer.reload_model_params()

    # -- one step -------------------------------------------------------------------------
    def train_step(self, stage_idx: int, stage: StageConfig, in_stage: int) -> dict:
        """One optimizer step at ``self.step`` (``stage_idx``-th curriculum stage, step
        ``in_stage`` within it); :meth:`run` calls it and advances ``self.step`` afterwards.

        Hook: override to train another objective. Contract: build this rank's micro-batches,
        then return :meth:`apply_step`'s log dict, its forward/backward running through
        :meth:`schedule`. ``flops`` / ``tokens`` in the dict add throughput to the log."""
        cfg = self.cfg
        if self.energon is None:
            plan = self.sampler.plan(self.step, stage, in_stage / max(1, stage.steps))
            mine = list(range(self.dp_rank, self.micro_batches, self.dp_size))
            batches = [
                collate([self.index.load(i) for i in plan.micro_batches[mb]], self.device)
                for mb in mine
            ]
        else:
            n_local = self.micro_batches // self.dp_size
            progress = in_stage / max(1, stage.steps)
            batches = self.energon.next_batches(
                self.step, stage_idx, stage, progress, n_local, self.device
            )
            mine = [self.dp_rank * n_local + j for j in range(n_local)]
        prepared = []
        count = 0
        tokens = 0
        samples = 0
        for mb, batch in zip(mine, batches):
            seed = micro_batch_seed(cfg.train.seed, self.step, mb)
            inputs = prepare_inputs(batch, cfg.objective, seed=seed, task_ratios=stage.task_ratios)
            b, c, t, h, w = batch.latents_BCTHW.shape
            count += noisy_element_count(inputs.noisy_frames_BT, c * h * w)
            bucket = (t, h, w, batch.height_px, batch.width_px)
            tokens += b * tokens_of(bucket, cfg.model.patch_size)
            samples += b
            prepared.append((batch, inputs))
        stats = torch.tensor([count, tokens, samples], dtype=torch.float64, device=self.device)
        dist.all_reduce(stats, group=self.dp_group)
        noisy_count = float(stats[0].item())
        global_tokens, global_samples = int(stats[1].item()), int(stats[2].item())

        def forward_backward() -> tuple[float, dict]:
            sse_sum = self.sum_over_step(self._forward_backward(prepared, noisy_count))
            return step_loss(float(sse_sum.item()), noisy_count), {}

        where = f"bucket {bucket}, samples {[k for b, _ in prepared for k in b.keys]}"
        log = self.apply_step(stage, in_stage, forward_backward, where)
        if log.get("skipped"):
            return log
        text_tokens = sum(sum(int(x.shape[0]) for x in b.texts) for b, _ in prepared)
        per_sample_text = text_tokens / max(1, sum(b.latents_BCTHW.shape[0] for b, _ in prepared))
        flops = train_step_flops(
            cfg.model,
            global_tokens // max(1, global_samples),
            int(per_sample_text),
            global_samples,
        )
        return {**log, "tokens": global_tokens, "flops": flops, "bucket": list(bucket)}

    def apply_step(self, stage: StageConfig, in_stage: int, forward_backward, where: str) -> dict:
        """The one optimizer step of every objective: set the stage's LR, zero the grads, run
        ``forward_backward()`` (the objective's forward/backward through :meth:`schedule`;
        it returns the step's loss, already the same on every rank, and its extra log
        entries), then -- unless the loss is NaN/Inf (:meth:`skip_nonfinite`, ``where``
        names the step's data) -- step the optimizer (Megatron clips and checks the grad
        norm), skip on a non-finite grad norm, and fold the weights into the EMA
        (:meth:`update_ema`) when the step was applied. Returns the log dict."""
        lr = stage_lr(stage, in_stage)
        set_lr(self.optimizer, lr)
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        loss, extra = forward_backward()
        if not math.isfinite(loss):
            return self.skip_nonfinite(loss, where, "loss")
        ok, grad_norm, _ = self.stepper.step()
        if grad_norm is not None and not math.isfinite(grad_norm):
            return self.skip_nonfinite(grad_norm, where, "grad norm")
        if self.ema is not None and ok:
            self.update_ema()
        return {
            "loss": loss,
            **extra,
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "lr": lr,
            "stage": stage.name,
        }

    def sum_over_step(self, sums: torch.Tensor) -> torch.Tensor:
        """``sums`` (computed on the last pipeline stage, zero on the others) summed over the
        pipeline stages and then the DP ranks, in place: the whole step's sums everywhere."""
        dist.all_reduce(sums, group=self.pp_group)
        dist.all_reduce(sums, group=self.dp_group)
        return sums

    def schedule(
        self,
        step_fn,
        micro_batches: list,
        shapes: list[tuple],
        *,
        model=None,
        forward_only: bool = False,
    ) -> list[dict]:
        """The one call of Megatron's forward-backward schedule (1F1B pipelining with PP > 1;
        forward only with ``forward_only``), over this rank's ``micro_batches`` of latent
        ``shapes`` ``(B, C, T, H, W)``, on ``model`` (default: the DDP-wrapped policy).
        ``step_fn(model, micro_batch)`` returns ``(output, loss_func)``, Megatron's
        forward-step contract: ``loss_func(output)`` gives ``(loss, {name: tensor})``; with
        backward the schedule differentiates ``loss`` and runs the DP/TP/PP grad reductions
        in its finalize hook. Returns the ``{name: tensor}`` dicts of the last pipeline
        stage (an empty list on the others)."""
        shape = shapes[0]
        if self.pp_size > 1 and any(s != shape for s in shapes):
            raise ValueError(
                f"pipeline micro-batches of one step differ in shape ({shape}): with "
                "parallel.pipeline_parallel > 1 a step's micro-batches need one latent shape"
            )

        def forward_step(data_iterator, m):
            return step_fn(m, next(data_iterator))

        outputs = get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iter(micro_batches),
            model=self.model if model is None else model,
            num_microbatches=len(micro_batches),
            seq_length=self.model.module.padded_length(shape),
            micro_batch_size=shape[0],
            forward_only=forward_only,
        )
        if self.parallel.pp_rank != self.pp_size - 1:
            return []
        return list(outputs)

    def _forward_backward(self, prepared: list, noisy_count: float) -> torch.Tensor:
        """Forward and backward of this rank's micro-batches (:meth:`schedule`; replayed as a
        CUDA graph with ``train.cuda_graph``). Returns the summed squared error on the last
        pipeline stage (0 elsewhere), float64."""
        # the net gradient is that of the step's loss, sum(sse) / noisy_count
        scale = micro_batch_loss_scale(noisy_count, self.dp_size, len(prepared))
        if self.graphs is not None:
            sse_sum = self.graphs(prepared, scale)
            if sse_sum is not None:
                return sse_sum
        return self.schedule_sse([(b, inputs, None) for b, inputs in prepared], scale)

    def schedule_sse(self, items: list, scale: float | torch.Tensor) -> torch.Tensor:
        """:meth:`schedule` over ``(batch, inputs, text)`` items (``text``: the packed
        :class:`PackedText`, or None to pack ``batch.texts``), each micro-batch's loss its
        summed squared error times ``scale`` (a float, or a device scalar in a graph).
        Returns the summed squared error, float64."""
        device = self.device

        def step_fn(model, item):
            batch, inputs, text = item
            step_phase("forward")  # named by a failed CUDA-graph capture
            noisy_BT = inputs.noisy_frames_BT.to(device)
            pred = model(
                inputs.noisy_BCTHW,
                inputs.sigma_B.to(device),
                PackedText.from_list(batch.texts) if text is None else text,
                fps_B=batch.fps_B,
                noisy_frames_BT=noisy_BT,
                drop_caption_B=inputs.drop_caption_B,
            )

            def loss_func(pred_BCTHW):
                sse = masked_velocity_sse(pred_BCTHW, inputs.target_BCTHW, noisy_BT)
                step_phase("backward / grad reduce (Megatron's schedule)")
                return sse * scale, {"sse": sse.detach().double()}

            return pred, loss_func

        shapes = [tuple(inputs.noisy_BCTHW.shape) for _, inputs, _ in items]
        sse_sum = torch.zeros((), dtype=torch.float64, device=device)
        for out in self.schedule(step_fn, items, shapes):
            sse_sum += out["sse"]
        return sse_sum

    def skip_nonfinite(self, value: float, where: str, what: str) -> dict:
        """A NaN/Inf ``what`` (``"loss"`` / ``"grad norm"``) of value ``value`` at ``where``:
        raise :class:`NonFiniteError` under ``train.nonfinite=stop`` (or past
        ``train.max_skipped_steps``), else drop this step's gradients and return the log of
        a skipped step. For subclasses' :meth:`train_step` too."""
        self.skipped += 1
        msg = f"non-finite {what} ({value}) at step {self.step}, {where}"
        if self.cfg.train.nonfinite == "stop" or self.skipped > self.cfg.train.max_skipped_steps:
            raise NonFiniteError(msg + f" (skipped so far: {self.skipped})")
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        return {"skipped": True, "reason": msg}

    @torch.no_grad()
    def update_ema(self) -> None:
        """Hook: fold the current weights into ``self.ema`` (called by :meth:`train_step`
        after an applied optimizer step, ``self.step`` not yet advanced). Here: one
        exponential moving average with ``train.ema_decay`` of the optimizer's fp32 master
        weights (:func:`~mugv_dit.optim.master.master_params`), not of the bf16 weights an
        update below half a bf16 ulp does not move: ``ema <- d ema + (1 - d) master``.
        Under the distributed optimizer each DP rank updates the elements whose master shard
        it holds; :meth:`sync_ema` makes the EMA whole before it is saved."""
        decay = self.cfg.train.ema_decay
        masters = master_params(self.model.module, self.optimizer)
        lerp_to_masters_(list(self.ema.parameters()), masters, 1 - decay, self.ema_pending)

    @torch.no_grad()
    def sync_ema(self) -> None:
        """The whole EMA on every rank after sharded updates (one sum-reduce over the DP
        group; nothing when no update was sharded). Collective: every rank calls it --
        :meth:`save` does, before the EMA is checkpointed (and so exported)."""
        if self.ema is not None and self.ema_pending:
            sync_sharded_(list(self.ema.parameters()), self.ema_pending)

    # -- the run ----------------------------------------------------------------------------
    def trainer_state(self) -> dict:
        state = {
            "step": self.step,
            "skipped": self.skipped,
            "sampler": self.sampler.state_dict(),
            "vae_checkpoint_id": self.index.header.vae_checkpoint_id,
        }
        if self.validator is not None:  # the checkpoint keeps its validation metrics
            state["validation"] = {
                "stage_steps": list(self.stage_steps),
                "plateau": self.plateau.state_dict(),
                "history": list(self.validations),
            }
        return state

    @property
    def total_steps(self) -> int:
        """Steps of the whole curriculum (stages ended early by a plateau counted as run)."""
        return sum(self.stage_steps)

    def stage_at(self, step: int) -> tuple[int, StageConfig, int]:
        """(stage index, stage, step within the stage) of global ``step`` in this run."""
        return stage_at(self.cfg.curriculum, step, self.stage_steps)

    def validate(self) -> dict:
        """Validation metrics of the current weights (collective; mugv_dit.validation),
        logged to metrics.jsonl, TensorBoard and the console (rank 0) and kept in the
        checkpoint's trainer state."""
        t0 = time.perf_counter()
        metrics = self.validator.evaluate(self)
        record = {"steps_done": self.step, **metrics, "time_s": time.perf_counter() - t0}
        self.validations.append(record)
        self._log_event({"validation": record})
        if self.rank == 0:
            if self.writer is not None:
                for k, v in metrics.items():
                    if k.startswith("loss"):
                        self.writer.add_scalar(f"val/{k}", v, self.step)
            tasks = " ".join(
                f"{k.split('/', 1)[1]}={v:.4f}" for k, v in metrics.items() if "_task/" in k
            )
            print(
                f"validation after step {self.step}: loss={metrics['loss']:.4f} ({tasks}; "
                f"{metrics['items']} items, {record['time_s']:.1f} s)",
                flush=True,
            )
        return record

    def _log_event(self, record: dict) -> None:
        """A metrics.jsonl line for what happened after step ``self.step - 1`` (its
        ``step``, so that a resume from a later checkpoint keeps it; rank 0)."""
        if self.rank == 0:
            with open_append_nofollow(self.out / "metrics.jsonl") as f:
                f.write(json.dumps({"step": self.step - 1, **record}) + "\n")

    def _validate_and_maybe_advance(self, stage_idx: int, in_stage: int) -> None:
        """Validate; in a stage with ``advance_on_plateau``, decide (logged) whether it ends
        now, ``in_stage + 1`` steps in."""
        record = self.validate()
        stage = self.cfg.curriculum[stage_idx]
        if stage.advance_on_plateau is None or in_stage + 1 >= self.stage_steps[stage_idx]:
            return
        decision = self.plateau.update(stage, record["loss"])
        decision["steps_in_stage"] = in_stage + 1
        if decision["advance"]:
            self.stage_steps[stage_idx] = in_stage + 1
        self._log_event({"plateau": decision})
        if self.rank == 0:
            verdict = (
                f"stage {stage.name!r} ends after {in_stage + 1} of {stage.steps} steps"
                if decision["advance"]
                else "stage continues"
            )
            print(
                f"plateau check: loss={decision['loss']:.4f}, best={decision['best']:.4f}, "
                f"{decision['bad']}/{decision['patience']} without improvement > "
                f"{decision['min_delta']}: {verdict}",
                flush=True,
            )

    def save(self) -> Path:
        self.sync_ema()
        self.last_saved_step = self.step
        return self.saver.save(
            self.step,
            self.model.module,
            self.ema,
            self.optimizer,
            self.trainer_state(),
            per_rank_saver=self._save_loader_state if self.energon is not None else None,
        )

    def _save_loader_state(self, path: Path) -> None:
        (path / "energon").mkdir(exist_ok=True)
        self.energon.save(path / "energon" / f"rank_{self.rank:05d}.pt")

    def run(self, max_steps: int | None = None) -> list[dict]:
        """Train until the curriculum ends (or ``max_steps`` more steps); return the logs."""
        cfg = self.cfg
        stop = None if max_steps is None else self.step + max_steps
        every_val = cfg.validation.every_steps
        logs = []
        bar = None
        if self.rank == 0 and cfg.train.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step")
        metrics_path = self.out / "metrics.jsonl"
        peak = cfg.train.peak_tflops if self.device.type == "cuda" else None  # MFU: GPUs only
        try:
            while self.step < (self.total_steps if stop is None else min(stop, self.total_steps)):
                stage_idx, stage, in_stage = self.stage_at(self.step)
                t0 = time.perf_counter()
                log = self.train_step(stage_idx, stage, in_stage)
                dt = time.perf_counter() - t0
                log.update(step=self.step, time_s=dt)
                if "flops" in log:
                    world = dist.get_world_size()
                    log["tflops_per_device"] = log["flops"] / dt / world / 1e12
                    log["tokens_per_s"] = log["tokens"] / dt
                    if peak:
                        log["mfu"] = log["tflops_per_device"] / peak
                self.step += 1
                logs.append(log)
                if self.rank == 0:
                    with open_append_nofollow(metrics_path) as f:
                        f.write(json.dumps(log) + "\n")
                    if (
                        self.writer is not None
                        and "loss" in log
                        and self.step % cfg.train.log_every == 0
                    ):
                        for k in (
                            "loss",
                            "grad_norm",
                            "lr",
                            "tflops_per_device",
                            "tokens_per_s",
                            "mfu",
                        ):
                            if k in log:
                                self.writer.add_scalar(f"train/{k}", log[k], self.step)
                    if bar is not None:
                        bar.update(1)
                        if "loss" in log:
                            bar.set_postfix(loss=f"{log['loss']:.4f}", stage=stage.name)
                if self.validator is not None and self.step % every_val == 0:
                    self._validate_and_maybe_advance(stage_idx, in_stage)
                if cfg.samples.every_steps and self.step % cfg.samples.every_steps == 0:
                    write_sample_export(self)  # rendered by `mugv eval watch` (mugv_dit.samples)
                if cfg.train.save_every and self.step % cfg.train.save_every == 0:
                    self.save()
                self.saver.poll()
            total = self.total_steps
            if (
                self.step == total
                and self.validator is not None
                and (not self.validations or self.validations[-1]["steps_done"] != total)
            ):
                self.validate()  # the final weights' loss (in the final checkpoint if unsaved)
            if self.step == total and self.last_saved_step != total:
                self.save()
            self.saver.wait()
        finally:
            if bar is not None:
                bar.close()
            if self.writer is not None:
                self.writer.flush()
        return logs

    def close(self) -> None:
        self.saver.close()
        if self.writer is not None:
            self.writer.close()
        self.stack.close()


def train_to_end(trainer: Trainer, max_steps: int | None) -> list[dict]:
    """What a training command does with its trainer (mugv-dit ``train``, mugv-align
    ``sft``/``dpo``/``kto``): run it (up to ``max_steps`` steps of this invocation), then close
    it and the process groups whatever happened. Returns the step logs."""
    try:
        return trainer.run(max_steps=max_steps)
    finally:
        trainer.close()
        destroy_distributed()
