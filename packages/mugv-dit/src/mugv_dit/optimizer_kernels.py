"""Faster optimizer-step pieces for Megatron-Core when apex and transformer-engine are absent.

Without apex / transformer-engine Megatron-Core falls back to ``torch.optim.AdamW`` with its
default multi-tensor (foreach) path, and to local replacements of apex's multi-tensor kernels
whose grad-norm reads every parameter's norm back to the host one at a time (a device sync
per tensor, which leaves the GPU idle) and whose grad scaling launches two kernels per
tensor. This module swaps in:

* :func:`foreach_l2_norm` / :func:`foreach_scale`: the same functions through
  ``torch._foreach_norm`` / ``torch._foreach_mul``, with no host sync;
* :func:`enable_fused_adam`: torch's fused (single-kernel) AdamW for the optimizer Megatron
  built; same update rule, rounding-level differences only.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def foreach_l2_norm(chunk_size, noop_flag, tensor_lists, per_tensor, *args):
    """Drop-in for apex's ``multi_tensor_l2norm``: ``(norm [1] float32, None)`` over all tensors
    of ``tensor_lists[0]``, computed on their device without a host round trip."""
    tensors = [t for t in tensor_lists[0] if t.numel()]
    if not tensors:
        return torch.zeros(1, dtype=torch.float32, device=noop_flag.device), None
    norms = torch._foreach_norm([t.float() if t.dtype != torch.float32 else t for t in tensors])
    total = torch.linalg.vector_norm(torch.stack(norms))
    return total.reshape(1).to(torch.float32), None


def foreach_scale(chunk_size, noop_flag, tensor_lists, scale):
    """Drop-in for apex's ``multi_tensor_scale``: ``dst = src * scale`` for paired lists."""
    src, dst = tensor_lists[0], tensor_lists[1]
    if not src:
        return
    if all(s is d for s, d in zip(src, dst)):
        torch._foreach_mul_(dst, scale)
        return
    torch._foreach_copy_(dst, torch._foreach_mul(src, scale))


def install_foreach_multi_tensor_ops() -> bool:
    """Route Megatron-Core's grad-norm and grad-scale through :func:`foreach_l2_norm` /
    :func:`foreach_scale` when it is using its slow local fallbacks. Returns True when it
    replaced them (apex or transformer-engine kernels are left alone)."""
    from megatron.core import utils
    from megatron.core.optimizer import clip_grads
    from megatron.core.optimizer import optimizer as megatron_optimizer

    if clip_grads.l2_norm_impl is not utils.local_multi_tensor_l2_norm:
        return False
    clip_grads.l2_norm_impl = foreach_l2_norm
    clip_grads.multi_tensor_scale_impl = foreach_scale
    if megatron_optimizer.multi_tensor_scale_impl is utils.local_multi_tensor_scale:
        megatron_optimizer.multi_tensor_scale_impl = foreach_scale
    return True


def _torch_adams(optimizer) -> list[torch.optim.Optimizer]:
    """The torch Adam/AdamW instances inside a (chained / mixed-precision) Megatron optimizer."""
    found = []
    stack = [optimizer]
    while stack:
        opt = stack.pop()
        if isinstance(opt, torch.optim.Adam | torch.optim.AdamW):
            found.append(opt)
            continue
        stack.extend(getattr(opt, "chained_optimizers", []) or [])
        inner = getattr(opt, "optimizer", None)
        if inner is not None and inner is not opt:
            stack.append(inner)
    return found


def enable_fused_adam(optimizer) -> int:
    """Switch every torch Adam/AdamW inside ``optimizer`` whose parameters are float32 on a
    device torch has fused kernels for (CUDA; recent torch also CPU) to the fused kernel. Step counters already created by the foreach path (host tensors, e.g.
    after a checkpoint load) are moved to the parameters' device before each step, where the
    fused kernel expects them. Returns how many optimizers were switched."""
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    supported = set(_get_fused_kernels_supported_devices())
    switched = 0
    for opt in _torch_adams(optimizer):
        params = [p for group in opt.param_groups for p in group["params"]]
        if not params or not all(
            p.device.type in supported and p.dtype == torch.float32 for p in params
        ):
            continue
        for group in opt.param_groups:
            group["fused"], group["foreach"] = True, False
        opt.register_step_pre_hook(_steps_on_device)
        switched += 1
    return switched


def keep_adam_kernel(optimizer):
    """Record the kernel choice (``fused`` / ``foreach``) of every torch Adam/AdamW inside
    ``optimizer``; the returned function puts it back. Loading a checkpoint replaces the
    param groups' settings with the saved ones, these flags included, so a run resumed with
    another ``train.fused_adam`` (or from a checkpoint written before the CPU used the fused
    kernel) would otherwise keep the checkpoint's kernel."""
    saved = [
        (opt, [(g.get("fused"), g.get("foreach")) for g in opt.param_groups])
        for opt in _torch_adams(optimizer)
    ]

    def restore() -> None:
        for opt, flags in saved:
            for group, (fused, foreach) in zip(opt.param_groups, flags, strict=True):
                group["fused"], group["foreach"] = fused, foreach

    return restore


def _steps_on_device(opt, args, kwargs) -> None:
    for p, state in opt.state.items():
        step = state.get("step")
        if isinstance(step, torch.Tensor) and step.device != p.device:
            state["step"] = step.to(device=p.device, dtype=torch.float32)
