"""Diagonal Gaussian posterior over latents."""

from __future__ import annotations

import torch


class DiagonalGaussian:
    """Posterior ``N(mean, exp(logvar))`` from moments ``[B, 2C, T, H, W]`` (mean first)."""

    def __init__(self, moments_B2CTHW: torch.Tensor) -> None:
        self.mean, logvar = moments_B2CTHW.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL to N(0, I), summed over C,T,H,W, one value per batch element."""
        kl = 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)
        return kl.flatten(1).sum(dim=1)
