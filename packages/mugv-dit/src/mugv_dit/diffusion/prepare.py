"""Turn a clean micro-batch into model inputs and targets (tasks, noise, caption dropout).

Randomness comes from one seed per (run seed, step, global micro-batch index), so every TP
rank (and every DP / accumulation layout) draws the same noise for the same micro-batch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from mugv_dit.config import ObjectiveConfig
from mugv_dit.diffusion.schedule import (
    add_noise,
    resolution_shift_ratio,
    sample_logit_normal,
    shift_sigma,
    velocity_target,
)
from mugv_dit.diffusion.tasks import choose_task, frame_mask


@dataclass
class CleanBatch:
    """A micro-batch of equal-shape clean samples as read from latent shards."""

    latents_BCTHW: torch.Tensor
    texts: list[torch.Tensor]
    fps_B: torch.Tensor
    height_px: int
    width_px: int
    keys: list[str]


@dataclass
class TrainInputs:
    """What the model and the loss need for one micro-batch."""

    noisy_BCTHW: torch.Tensor
    sigma_B: torch.Tensor
    target_BCTHW: torch.Tensor
    noisy_frames_BT: torch.Tensor
    drop_caption_B: torch.Tensor
    tasks: list[str]


def micro_batch_seed(run_seed: int, step: int, micro_batch: int) -> int:
    """Deterministic seed of one micro-batch of one step."""
    return (run_seed * 1_000_003 + step * 10_007 + micro_batch) % (2**63 - 1)


def prepare_inputs(
    batch: CleanBatch,
    cfg: ObjectiveConfig,
    *,
    seed: int,
    task_ratios: dict[str, float] | None = None,
) -> TrainInputs:
    """Draw tasks, frame masks, noise levels, noise and caption dropout for a micro-batch."""
    x0 = batch.latents_BCTHW
    b, _, t, _, _ = x0.shape
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    ratios = task_ratios or cfg.task_ratios
    tasks = [choose_task(t, ratios, rng) for _ in range(b)]
    noisy_frames_BT = torch.stack(
        [frame_mask(task, t, rng, cfg.continuation_max_frames) for task in tasks]
    )
    sigma_B = sample_logit_normal(
        b, mean=cfg.logit_normal_mean, std=cfg.logit_normal_std, generator=gen
    )
    if cfg.shift_by_resolution:
        ratio = resolution_shift_ratio(batch.height_px, batch.width_px, t, cfg.base_resolution)
        sigma_B = shift_sigma(sigma_B, ratio)
    # drawn on the CPU from the seeded generator (same numbers on every device), then moved
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float32).to(x0.device, x0.dtype)
    noisy = add_noise(x0, noise, sigma_B.to(x0.device))
    keep = noisy_frames_BT[:, None, :, None, None].to(x0.device)
    noisy = torch.where(keep, noisy, x0)  # conditioning frames stay clean
    drop = torch.rand(b, generator=gen) < cfg.caption_dropout
    return TrainInputs(
        noisy_BCTHW=noisy,
        sigma_B=sigma_B.float(),
        target_BCTHW=velocity_target(x0, noise),
        noisy_frames_BT=noisy_frames_BT,
        drop_caption_B=drop,
        tasks=tasks,
    )
