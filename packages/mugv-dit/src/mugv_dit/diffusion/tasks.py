"""Conditioning tasks and their frame masks.

``noisy_frames [T]``: True for latent frames the model must denoise; False for clean
conditioning frames (kept at x0 and modulated with t=0). Tasks:

* ``t2i``: a single-frame sample (image); all noisy.
* ``t2v``: all frames noisy.
* ``i2v``: latent 0 (the still-image latent of the VAE) is clean.
* ``continuation``: the first k latents (1 <= k <= max, k < T) are clean.
"""

from __future__ import annotations

import random

import torch

TASKS = ("t2i", "t2v", "i2v", "continuation")


def choose_task(latent_frames: int, ratios: dict[str, float], rng: random.Random) -> str:
    """Draw a task for a sample with ``latent_frames`` frames from the configured ratios."""
    if latent_frames == 1:
        return "t2i"
    names = [k for k, v in ratios.items() if v > 0]
    if not names:
        raise ValueError(f"task ratios {ratios} have no positive entry")
    return rng.choices(names, weights=[ratios[k] for k in names])[0]


def frame_mask(
    task: str, latent_frames: int, rng: random.Random, continuation_max_frames: int = 2
) -> torch.Tensor:
    """Bool ``[T]`` mask of noisy frames for ``task``."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    mask = torch.ones(latent_frames, dtype=torch.bool)
    if task in ("t2i", "t2v") or latent_frames == 1:
        return mask
    if task == "i2v":
        mask[0] = False
        return mask
    k = rng.randint(1, max(1, min(continuation_max_frames, latent_frames - 1)))
    mask[:k] = False
    return mask
