"""The optimizer and its learning-rate schedule.

Megatron's (distributed) Adam over the DDP-wrapped model, fp32 main params when training in
bf16; the learning rate of each step comes from its curriculum stage (:func:`stage_lr`) and
is set on the optimizer by :func:`set_lr` before the step.
"""

from __future__ import annotations

import math

import torch
from megatron.core.optimizer import MegatronOptimizer, OptimizerConfig, get_megatron_optimizer

from mugv_dit.config import RunConfig, StageConfig
from mugv_dit.megatron_patches.multi_tensor import install_foreach_multi_tensor_ops
from mugv_dit.optim.fused_adam import enable_fused_adam
from mugv_dit.optim.sync_free_step import SyncFreeStep, sync_free_step


def build_optimizer(
    cfg: RunConfig, ddp_model, *, bf16: bool, dtype: torch.dtype, device
) -> tuple[MegatronOptimizer, MegatronOptimizer | SyncFreeStep]:
    """Megatron optimizer of ``ddp_model`` from ``cfg.train`` (LR: the first stage's until
    :func:`set_lr`) and what steps it: with ``train.fused_adam`` torch's fused AdamW kernel (on
    every device torch has it for) and, with ``train.sync_free_step``, a
    :class:`~mugv_dit.optim.sync_free_step.SyncFreeStep` wrapping it where it reproduces Megatron's
    step; otherwise the optimizer itself. Returns ``(optimizer, stepper)``; call
    ``stepper.step()``."""
    train = cfg.train
    opt_cfg = OptimizerConfig(
        optimizer="adam",
        lr=cfg.curriculum[0].lr,
        weight_decay=train.weight_decay,
        adam_beta1=train.adam_beta1,
        adam_beta2=train.adam_beta2,
        adam_eps=train.adam_eps,
        clip_grad=train.clip_grad,
        bf16=bf16,
        params_dtype=dtype,
        use_distributed_optimizer=cfg.parallel.distributed_optimizer,
    )
    install_foreach_multi_tensor_ops()  # no host sync per tensor in the grad norm
    optimizer = get_megatron_optimizer(opt_cfg, [ddp_model])
    stepper = None
    if train.fused_adam and enable_fused_adam(optimizer) and train.sync_free_step:
        stepper = sync_free_step(optimizer)
    return optimizer, stepper if stepper is not None else optimizer


def stage_lr(stage: StageConfig, step_in_stage: int) -> float:
    """Learning rate of a stage: linear warm-up, then constant / cosine / linear decay."""
    if stage.warmup_steps and step_in_stage < stage.warmup_steps:
        return stage.lr * (step_in_stage + 1) / stage.warmup_steps
    if stage.lr_decay == "constant":
        return stage.lr
    span = max(1, stage.steps - stage.warmup_steps)
    frac = min(1.0, (step_in_stage - stage.warmup_steps) / span)
    if stage.lr_decay == "linear":
        return stage.min_lr + (stage.lr - stage.min_lr) * (1 - frac)
    return stage.min_lr + (stage.lr - stage.min_lr) * 0.5 * (1 + math.cos(math.pi * frac))


def set_lr(optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
