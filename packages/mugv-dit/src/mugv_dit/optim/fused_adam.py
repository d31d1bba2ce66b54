"""torch's fused AdamW inside the optimizer Megatron-Core built.

Without apex / transformer-engine Megatron-Core uses ``torch.optim.AdamW`` with its default
multi-tensor (foreach) path. :func:`enable_fused_adam` switches it to torch's fused
(single-kernel) AdamW through the param groups' public ``fused`` / ``foreach`` flags: same
update rule, rounding-level differences only. :func:`keep_adam_kernel` keeps that choice
across a checkpoint load. (The grad-norm / grad-scale kernels Megatron calls are replaced in
:mod:`mugv_dit.megatron_patches.multi_tensor`.)
"""

from __future__ import annotations

import torch
from torch.optim.optimizer import _get_fused_kernels_supported_devices


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
