"""Unified variant: one encoder/decoder over pixels, 2D and 3D blocks alternating per stage.

The report's later VAE drops the separate image trunk: every stage alternates a per-frame 2D
res-block (kernel 1x3x3) with a 3D res-block (3x3x3), and each of the first three stages
down-samples space and time by 2 (8x8x8 in total). The same 1+8k rule, minimal encoding
(8-frame pixel chunks are batch elements) and decoder windows apply, since ``MUGVAE`` drives
it exactly like the temporal VAE, with an identity trunk.

Tensor legend: B batch (x chunks), C channels, T frames, H, W pixels.
"""

from __future__ import annotations

import torch
from torch import nn

from mugv_vae.config import TemporalConfig, UnifiedConfig
from mugv_vae.model.temporal import DepthToSpaceTime, ResBlock3d, TimeConv3d, group_norm_silu


def _blocks(cin: int, cout: int, cfg: UnifiedConfig, norm: TemporalConfig) -> nn.ModuleList:
    """``pairs`` x (2D block, 3D block); the first block maps cin -> cout."""
    blocks = []
    for i in range(2 * cfg.pairs_per_stage):
        kernel = (1, 3) if i % 2 == 0 else 3
        blocks.append(ResBlock3d(cin if i == 0 else cout, cout, norm, kernel=kernel))
    return nn.ModuleList(blocks)


def _norm_cfg(cfg: UnifiedConfig) -> TemporalConfig:
    return TemporalConfig(
        filters=cfg.channels[0],
        channel_multipliers=(1, 1, 1, 1),
        num_res_blocks=1,
        num_groups=cfg.num_groups,
    )


class UnifiedEncoder(nn.Module):
    """Pixel chunks ``[B, 3, 8, H, W]`` -> moments ``[B, 2*latent, 1, H/8, W/8]``."""

    def __init__(self, in_channels: int, latent_channels: int, cfg: UnifiedConfig) -> None:
        super().__init__()
        norm = _norm_cfg(cfg)
        widths = cfg.channels
        self.conv_in = TimeConv3d(in_channels, widths[0], 3)
        self.stages = nn.ModuleList()
        self.downs = nn.ModuleList()
        prev = widths[0]
        for i, width in enumerate(widths):
            self.stages.append(_blocks(prev, width, cfg, norm))
            prev = width
            if i < len(widths) - 1:
                self.downs.append(TimeConv3d(width, width, 3, time_stride=2, space_stride=2))
        self.mid = nn.ModuleList(ResBlock3d(prev, prev, norm) for _ in range(2))
        self.norm_out = nn.GroupNorm(cfg.num_groups, prev)
        self.conv_out = TimeConv3d(prev, 2 * latent_channels, 1)
        self.moments_proj = TimeConv3d(2 * latent_channels, 2 * latent_channels, 1)
        self.fused = False

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        x_BCTHW = self.conv_in(x_BCTHW)
        for i, stage in enumerate(self.stages):
            for block in stage:
                x_BCTHW = block(x_BCTHW)
            if i < len(self.downs):
                x_BCTHW = self.downs[i](x_BCTHW)
        for block in self.mid:
            x_BCTHW = block(x_BCTHW)
        x_BCTHW = self.conv_out(group_norm_silu(x_BCTHW, self.norm_out, self.fused))
        return self.moments_proj(x_BCTHW)


class SpaceTimeUpsample(nn.Module):
    """Double T (conv + depth-to-space) and H, W (nearest + 3x3 per-frame conv)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.time = DepthToSpaceTime(channels)
        self.space = TimeConv3d(channels, channels, (1, 3))

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        x_BCTHW = self.time(x_BCTHW)
        x_BCTHW = x_BCTHW.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)
        return self.space(x_BCTHW)


class UnifiedDecoder(nn.Module):
    """Latents ``[B, latent, R, h, w]`` -> pixels ``[B, 3, 8R, 8h, 8w]``."""

    def __init__(self, out_channels: int, latent_channels: int, cfg: UnifiedConfig) -> None:
        super().__init__()
        norm = _norm_cfg(cfg)
        widths = list(reversed(cfg.channels))
        self.latent_proj = TimeConv3d(latent_channels, latent_channels, 1)
        self.conv_in = TimeConv3d(latent_channels, widths[0], 3)
        self.mid = nn.ModuleList(ResBlock3d(widths[0], widths[0], norm) for _ in range(2))
        self.stages = nn.ModuleList()
        self.ups = nn.ModuleList()
        prev = widths[0]
        for i, width in enumerate(widths):
            self.stages.append(_blocks(prev, width, cfg, norm))
            prev = width
            if i < len(widths) - 1:
                self.ups.append(SpaceTimeUpsample(width))
        self.norm_out = nn.GroupNorm(cfg.num_groups, prev)
        self.conv_out = TimeConv3d(prev, out_channels, 3)
        self.fused = False

    def forward(self, z_BCTHW: torch.Tensor) -> torch.Tensor:
        x_BCTHW = self.conv_in(self.latent_proj(z_BCTHW))
        for block in self.mid:
            x_BCTHW = block(x_BCTHW)
        for i, stage in enumerate(self.stages):
            for block in stage:
                x_BCTHW = block(x_BCTHW)
            if i < len(self.ups):
                x_BCTHW = self.ups[i](x_BCTHW)
        return self.conv_out(group_norm_silu(x_BCTHW, self.norm_out, self.fused))


class PixelTrunk(nn.Module):
    """Identity trunk of the unified variant: features are the pixels themselves. It has the
    spatial trunk's runtime switches, with nothing to switch."""

    gradient_checkpointing = False
    fold_upsample = False

    def set_fused_group_norm_silu(self, fused: bool) -> None:
        """No norms here."""

    def set_channels_last(self, enabled: bool) -> None:
        """No weights here."""

    def set_compile(self, enabled: bool) -> None:
        """Nothing to compile."""

    def encode(self, x_NCHW: torch.Tensor) -> torch.Tensor:
        return x_NCHW

    def decode(self, f_NCHW: torch.Tensor) -> torch.Tensor:
        return f_NCHW
