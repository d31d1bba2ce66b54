"""Reconstruction, KL and adversarial losses of VAE training (pure functions).

Tensor legend: B batch, C channels, T frames, H, W pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def spatial_laplacian(x_BCTHW: torch.Tensor) -> torch.Tensor:
    """3x3 Laplacian of every frame and channel (replicate padding), same shape."""
    b, c, t, h, w = x_BCTHW.shape
    k = _LAPLACIAN.to(x_BCTHW).view(1, 1, 3, 3).expand(c, 1, 3, 3)
    frames = x_BCTHW.transpose(1, 2).reshape(b * t, c, h, w)
    lap = F.conv2d(F.pad(frames, (1, 1, 1, 1), mode="replicate"), k, groups=c)
    return lap.view(b, t, c, h, w).transpose(1, 2)


def adaptive_l1_weight(x_BCTHW: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-pixel L1 weight ``1 + strength * d / mean(d)`` with
    ``d = |temporal difference of the spatial Laplacian|`` (channel mean; 0 for frame 0 and
    for single images). Emphasises moving edges. No gradient. Shape ``[B, 1, T, H, W]``."""
    with torch.no_grad():
        if x_BCTHW.shape[2] < 2 or strength == 0:
            return torch.ones_like(x_BCTHW[:, :1])
        lap = spatial_laplacian(x_BCTHW.float())
        d = (lap[:, :, 1:] - lap[:, :, :-1]).abs().mean(dim=1, keepdim=True)
        d = torch.cat([torch.zeros_like(d[:, :, :1]), d], dim=2)
        d = d / (d.mean(dim=(2, 3, 4), keepdim=True) + 1e-6)
        return 1.0 + strength * d


def reconstruction_losses(
    recon_BCTHW: torch.Tensor, target_BCTHW: torch.Tensor, adaptive_strength: float
) -> dict[str, torch.Tensor]:
    """MSE and (adaptively weighted) L1 between reconstruction and target."""
    diff = recon_BCTHW.float() - target_BCTHW.float()
    weight = adaptive_l1_weight(target_BCTHW, adaptive_strength)
    return {"mse": diff.pow(2).mean(), "l1": (weight * diff.abs()).mean()}


def kl_loss(posterior) -> torch.Tensor:
    """KL to N(0, I), summed over latent elements, averaged over the batch."""
    return posterior.kl().mean()


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()
