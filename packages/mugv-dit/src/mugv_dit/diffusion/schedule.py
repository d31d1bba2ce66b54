"""Rectified flow: noise levels, interpolation and velocity target.

Convention (as DESIGN.md): ``x_s = (1 - s) x0 + s eps`` with s in [0, 1] (s = 1 is pure
noise); the model predicts ``v = x0 - eps``. Training levels come from a logit-normal and are
shifted towards noise for larger/longer samples:
``s' = r s / (1 + (r - 1) s)`` with ``r = sqrt(H*W / 512^2) * sqrt(T_latent)``.
"""

from __future__ import annotations

import math

import torch


def sample_logit_normal(
    n: int, *, mean: float = 0.0, std: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``sigmoid(N(mean, std))`` samples, float64 ``[n]`` in (0, 1)."""
    z = torch.randn(n, generator=generator, dtype=torch.float64)
    return torch.sigmoid(mean + std * z)


def resolution_shift_ratio(
    height: int, width: int, latent_frames: int, base_resolution: int = 512 * 512
) -> float:
    """``sqrt(H*W / base) * sqrt(T_latent)`` for pixel height/width and latent frames."""
    if height <= 0 or width <= 0 or latent_frames <= 0:
        raise ValueError(f"bad sample size H={height} W={width} T_latent={latent_frames}")
    return math.sqrt(height * width / base_resolution) * math.sqrt(latent_frames)


def shift_sigma(sigma: torch.Tensor, ratio: float | torch.Tensor) -> torch.Tensor:
    """Time-shift noise levels: ``r s / (1 + (r - 1) s)`` (identity for r = 1)."""
    return ratio * sigma / (1 + (ratio - 1) * sigma)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma_B: torch.Tensor) -> torch.Tensor:
    """``(1 - s) x0 + s eps`` with a per-sample s broadcast over the other dims."""
    s = sigma_B.to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
    return (1 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``v = x0 - eps`` (so that ``x0 = x_s + s v``)."""
    return x0 - noise
