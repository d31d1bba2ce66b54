"""Megatron's optimizer step without a host sync, as a wrapper object around its optimizer.

Megatron-Core's :meth:`ChainedOptimizer.step` over distributed optimizers walks every
parameter in Python three times per step (main-grad views, the grads for the norm, the copy of
the fp32 main params back into the bf16 param buffer) and reads the grad norm back to the host
(``.item()``) to decide on clipping, so the GPU idles while the host works: on one H200 at
1728 x 8 layers its step took 14.3 ms of host time for 8.4 ms of kernels (issue 10).

:class:`SyncFreeStep` wraps the Megatron optimizer (the trainer calls ``wrapper.step()``;
Megatron's optimizer keeps its own ``step``, ``zero_grad``, state dicts and checkpointing) and
does the same step with what Megatron built, in the common case (bf16 or fp32 distributed
optimizers, fp32 main grads, torch's fused AdamW, no loss scaler, no fp8):

* the shard-grad views, the grads for the norm (Megatron's own filter) and the param-copy pairs
  are found once, at the first step (after any checkpoint load), by Megatron's own methods,
  into flat lists; Megatron builds its shard params once in its constructor and a checkpoint
  load copies into them, so the lists stay valid (:meth:`SyncFreeStep.refresh` rebuilds them);
* the global grad norm stays on the device: one ``torch._foreach_norm`` over the flat list of
  grads, summed over Megatron's grad-stats group;
* clipping and the non-finite check go into the fused AdamW kernel (``grad_scale`` =
  ``max(1, (norm + 1e-6) / clip_grad)``, ``found_inf`` = norm is not finite): the same
  update as Megatron's ``clip_coeff = clip_grad / (norm + 1e-6)`` scaling, and a step whose
  grad norm is NaN/Inf leaves the params, the moments and the step count untouched (Megatron's
  step without a loss scaler applies it);
* the main params are copied into the param buffer with one ``torch._foreach_copy_``; the param
  all-gather is Megatron's (``start_param_sync``), as in its step.

The per-parameter Python left in a step, and why: (1) one attribute store per fp32 main shard,
``main.grad = <cached view>``, because Megatron's ``zero_grad()`` (which every training step
calls) sets those ``.grad`` to ``None`` and torch's Adam reads ``p.grad``; no tensor op, no
sync; (2) torch AdamW's own ``step``, which gathers its param/state lists in Python as every
torch optimizer does before its one fused kernel. Everything else is per optimizer (one per
dtype group) or one multi-tensor call.

``step()`` returns ``(True, grad_norm, None)`` like Megatron's step, with ``grad_norm`` a 0-dim
device tensor (``float()`` of it is the one sync, when the caller logs it). Optimizers it cannot
handle exactly make :func:`sync_free_step` return ``None`` (the caller keeps Megatron's step).
"""

from __future__ import annotations

import dataclasses
import logging

import torch
import torch.distributed as dist
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

log = logging.getLogger(__name__)


def _inner_optimizers(optimizer) -> list:
    return list(getattr(optimizer, "chained_optimizers", None) or [optimizer])


def why_not(optimizer) -> str | None:
    """``None`` when :class:`SyncFreeStep` reproduces ``optimizer.step()``, else the reason."""
    inner = _inner_optimizers(optimizer)
    if not inner:
        return "no optimizers"
    groups = set()
    for opt in inner:
        if not isinstance(opt, DistributedOptimizer):
            return f"{type(opt).__name__} is not Megatron's DistributedOptimizer"
        cfg, ddp = opt.config, opt.ddp_config
        if getattr(opt, "is_stub_optimizer", False):
            return "stub optimizer"
        if opt.grad_scaler is not None:
            return "loss scaling (fp16)"
        if cfg.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            return "precision-aware optimizer"
        if getattr(ddp, "use_megatron_fsdp", False):
            return "Megatron FSDP"
        if getattr(cfg, "reuse_grad_buf_for_mxfp8_param_ag", False) or cfg.log_num_zeros_in_grad:
            return "mxfp8 param all-gather / zero counting"
        if getattr(cfg, "overlap_param_gather_with_optimizer_step", False):
            return "param gather overlapped with the optimizer step"
        if getattr(cfg, "timers", None) is not None:
            return "Megatron timers"
        if getattr(cfg, "fp8_recipe", None) not in (None, "delayed") or any(
            "float8" in type(p).__name__.lower() for g in opt.model_float16_groups for p in g
        ):
            return "fp8 params"
        adam = opt.optimizer
        if not isinstance(adam, torch.optim.Adam | torch.optim.AdamW):
            return f"inner optimizer {type(adam).__name__} is not torch Adam/AdamW"
        if not all(g.get("fused") for g in adam.param_groups):
            return "torch AdamW is not fused (train.fused_adam)"
        if any(
            p.main_grad.dtype != torch.float32
            for g in (*opt.model_float16_groups, *opt.model_fp32_groups)
            for p in g
        ):
            return "main grads are not float32 (grad_reduce_in_fp32)"
        groups.add(opt.get_grad_stats_parallel_group())
    if len(groups) != 1:
        return "optimizers reduce grad stats over different groups"
    return None


@dataclasses.dataclass
class _ShardViews:
    """One DistributedOptimizer's fp32 main shards and the views they pair with, flat."""

    opt: DistributedOptimizer
    main: list[torch.Tensor]  # fp32 main shards (the torch optimizer's params)
    grads: list[torch.Tensor]  # their grads: views into DDP's fp32 grad buffer
    model_views: list[torch.Tensor]  # where each main shard goes in the param buffer

    @classmethod
    def of(cls, opt: DistributedOptimizer) -> _ShardViews:
        views = cls(opt, [], [], [])
        pairs = (
            (opt.model_float16_groups, opt.shard_fp32_from_float16_groups),
            (opt.model_fp32_groups, opt.shard_fp32_groups),
        )
        for model_groups, main_groups in pairs:
            for model_group, main_group in zip(model_groups, main_groups, strict=True):
                for model_param, main_param in zip(model_group, main_group, strict=True):
                    ranges = opt._get_model_param_range_map(model_param)
                    prange, world = ranges["param"], ranges["gbuf_world_in_bucket"]
                    gbuf, _, bucket = opt.model_param_gbuf_map[model_param]
                    param_data = opt.buffers[gbuf].buckets[bucket].param_data
                    views.main.append(main_param)
                    views.grads.append(model_param.main_grad.view(-1)[prange.start : prange.end])
                    views.model_views.append(param_data.view(-1)[world.start : world.end])
        return views

    def bind_grads(self) -> None:
        for main, grad in zip(self.main, self.grads):
            main.grad = grad


class SyncFreeStep:
    """Wrapper around a Megatron optimizer whose :meth:`step` is Megatron's step for the case
    :func:`why_not` accepts (see the module docstring)."""

    def __init__(self, optimizer) -> None:
        reason = why_not(optimizer)
        if reason is not None:
            raise ValueError(f"SyncFreeStep cannot replace this optimizer's step: {reason}")
        self.optimizer = optimizer
        self.inner = _inner_optimizers(optimizer)
        self.group = self.inner[0].get_grad_stats_parallel_group()
        self._shards: list[_ShardViews] | None = None
        self._grads_for_norm: list[torch.Tensor] = []

    def refresh(self) -> None:
        """Find the views again at the next step (after the optimizer's params were replaced)."""
        self._shards = None

    def _views(self) -> list[_ShardViews]:
        if self._shards is None:
            self._shards = [_ShardViews.of(opt) for opt in self.inner]
            for s in self._shards:
                s.bind_grads()  # Megatron's filter reads the main grads
            self._grads_for_norm = [
                g for opt in self.inner for g in opt.get_main_grads_for_grad_norm() if g.numel()
            ]
        return self._shards

    @torch.no_grad()
    def grad_norm(self) -> torch.Tensor:
        """Global L2 norm of the main grads (0-dim float32 tensor on their device)."""
        shards = self._views()
        if self._grads_for_norm:
            sq = torch.stack(torch._foreach_norm(self._grads_for_norm)).square().sum()
        else:
            device = shards[0].grads[0].device if shards[0].grads else torch.device("cpu")
            sq = torch.zeros((), dtype=torch.float32, device=device)
        if self.group is not None and dist.is_initialized() and dist.get_world_size(self.group) > 1:
            dist.all_reduce(sq, op=dist.ReduceOp.SUM, group=self.group)
        return sq.sqrt()

    @torch.no_grad()
    def step(self) -> tuple[bool, torch.Tensor, None]:
        """One optimizer step over the grads DDP reduced: ``(True, grad_norm, None)``."""
        shards = self._views()
        for s in shards:
            s.bind_grads()  # Megatron's zero_grad() unbound them (module docstring)
        norm = self.grad_norm()
        found_inf = (~torch.isfinite(norm)).to(torch.float32)
        for s in shards:
            opt = s.opt
            adam = opt.optimizer
            clip = opt.config.clip_grad
            adam.grad_scale = ((norm + 1.0e-6) / clip).clamp(min=1.0) if clip > 0 else None
            adam.found_inf = found_inf
            try:
                adam.step()
            finally:
                del adam.grad_scale, adam.found_inf
            if s.model_views:
                torch._foreach_copy_(s.model_views, s.main)
            if not opt.ddp_config.overlap_param_gather:
                for chunk in opt.model_chunks:
                    chunk.start_param_sync()
        return True, norm, None


def sync_free_step(optimizer) -> SyncFreeStep | None:
    """A :class:`SyncFreeStep` for ``optimizer``, or ``None`` (logged) when it does not apply."""
    reason = why_not(optimizer)
    if reason is not None:
        log.info("optimizer step: Megatron's (%s)", reason)
        return None
    return SyncFreeStep(optimizer)
