"""3D patch discriminator (PatchGAN over space and time) for the final GAN fine-tune."""

from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator3D(nn.Module):
    """Strided 3D convs -> one logit per space-time patch ``[B, 1, T', H', W']``.

    Spatial stride 2 in every layer, time stride 1 (single images, T=1, work too).
    """

    def __init__(self, channels: int = 64, layers: int = 3, in_channels: int = 3) -> None:
        super().__init__()
        mods: list[nn.Module] = [
            nn.Conv3d(in_channels, channels, (3, 4, 4), (1, 2, 2), (1, 1, 1)),
            nn.LeakyReLU(0.2),
        ]
        c = channels
        for i in range(1, layers):
            nxt = channels * min(2**i, 8)
            mods += [
                nn.Conv3d(c, nxt, (3, 4, 4), (1, 2, 2), (1, 1, 1), bias=False),
                nn.GroupNorm(min(32, nxt // 4), nxt),
                nn.LeakyReLU(0.2),
            ]
            c = nxt
        mods.append(nn.Conv3d(c, 1, (3, 3, 3), 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        return self.net(x_BCTHW)
