"""Reconstruction metrics on videos in [-1, 1]: PSNR and SSIM (per frame, then averaged).

Both are computed on the [0, 1] scale (data range 1). SSIM follows Wang et al. (2004):
11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, 'valid' windows, channel mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _frames(x_BCTHW: torch.Tensor) -> torch.Tensor:
    b, c, t, h, w = x_BCTHW.shape
    return ((x_BCTHW.double() + 1) / 2).clamp(0, 1).transpose(1, 2).reshape(b * t, c, h, w)


def psnr(recon_BCTHW: torch.Tensor, target_BCTHW: torch.Tensor) -> torch.Tensor:
    """Mean over frames of ``10 log10(1 / MSE)`` (MSE floored at 1e-10)."""
    x, y = _frames(recon_BCTHW), _frames(target_BCTHW)
    mse = (x - y).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return (10 * torch.log10(1.0 / mse)).mean()


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(recon_BCTHW: torch.Tensor, target_BCTHW: torch.Tensor) -> torch.Tensor:
    """Mean SSIM over frames and channels."""
    x, y = _frames(recon_BCTHW), _frames(target_BCTHW)
    c = x.shape[1]
    win = _gaussian_window().to(x.device)
    size = win.shape[0]
    if x.shape[-1] < size or x.shape[-2] < size:
        raise ValueError(f"SSIM needs frames of at least {size}x{size}, got {tuple(x.shape[-2:])}")
    k = win.expand(c, 1, size, size)

    def filt(v: torch.Tensor) -> torch.Tensor:
        return F.conv2d(v, k, groups=c)

    mu_x, mu_y = filt(x), filt(y)
    sxx = filt(x * x) - mu_x**2
    syy = filt(y * y) - mu_y**2
    sxy = filt(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.mean()
