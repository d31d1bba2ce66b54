"""Conv-only temporal VAE: 8 frames of trunk features <-> one latent.

Tensor legend: B batch (or batch x chunks), C channels, T time, H, W feature height/width.
Every convolution pads time with zeros symmetrically and space with zeros, so one 8-frame
chunk never sees another (minimal encoding is enforced by the caller's reshape).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mugv_vae.config import TemporalConfig
from mugv_vae.model.nhwc_ops import group_norm_silu_nhwc, kernels_apply


def group_norm_silu(
    x: torch.Tensor, norm: nn.GroupNorm, fused: bool, nhwc: bool = False
) -> torch.Tensor:
    """GroupNorm followed by SiLU: the VAE's channels-last kernels when ``nhwc`` and they
    apply, else ``mugv_kernels.group_norm_silu`` (fused Triton) if ``fused``, else torch."""
    if nhwc and kernels_apply(x, norm.num_groups):
        return group_norm_silu_nhwc(x, norm)
    if fused:
        from mugv_kernels import group_norm_silu as fused_op

        return fused_op(x, norm.num_groups, norm.weight, norm.bias, eps=norm.eps)
    return F.silu(norm(x))


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """``channels_last_3d`` for an NDHWC-strided 5D tensor, else ``contiguous_format``."""
    cl = x.ndim == 5 and not x.is_contiguous()
    if cl and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def _empty_like_layout(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """An empty tensor of ``shape`` with ``x``'s dtype, device and memory format."""
    fmt = _memory_format(x)
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)


class TimeConv3d(nn.Module):
    """3D convolution with zero padding: symmetric in time, ``k//2`` in space.

    For stride 1 the time padding is ``(k-1)//2`` before and ``k-1-(k-1)//2`` after; for
    stride 2 with k=3 it is 0 before and 1 after, so T frames give T/2 outputs.
    ``kernel_size`` is ``k`` or ``(k_time, k_space)`` (``(1, 3)``: a per-frame 2D conv);
    ``space_stride=2`` halves H and W (padding 0 before, 1 after, like time).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        time_stride: int = 1,
        bias: bool = True,
        space_stride: int = 1,
    ) -> None:
        super().__init__()
        kt, ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        time_pad = (kt - 1) + (1 - time_stride)
        space_pad = (ks - 1) + (1 - space_stride)
        self.time_pad = (time_pad // 2, time_pad - time_pad // 2)
        self.space_pad = (space_pad // 2, space_pad - space_pad // 2)
        symmetric = self.space_pad[0] == self.space_pad[1]
        # Symmetric zero padding goes into the conv itself (no padded copy of the input).
        time_symmetric = self.time_pad[0] == self.time_pad[1]
        self.conv = nn.Conv3d(
            in_channels,
            out_channels,
            kernel_size=(kt, ks, ks),
            stride=(time_stride, space_stride, space_stride),
            padding=(
                self.time_pad[0] if time_symmetric else 0,
                self.space_pad[0] if symmetric else 0,
                self.space_pad[0] if symmetric else 0,
            ),
            bias=bias,
        )
        self._pad_space = not symmetric
        self._pad_time = not time_symmetric

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        sp = self.space_pad if self._pad_space else (0, 0)
        tp = self.time_pad if self._pad_time else (0, 0)
        if tp != (0, 0) or sp != (0, 0):
            x_BCTHW = F.pad(x_BCTHW, (*sp, *sp, *tp))
        return self.conv(x_BCTHW)


class ResBlock3d(nn.Module):
    """GroupNorm+SiLU -> conv -> GroupNorm+SiLU -> conv, plus a (1x1x1) shortcut.

    ``kernel=(1, 3)`` makes it a per-frame 2D block (used by the unified variant)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cfg: TemporalConfig,
        kernel: int | tuple[int, int] = 3,
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(cfg.num_groups, in_channels, eps=cfg.norm_eps)
        self.conv1 = TimeConv3d(in_channels, out_channels, kernel, bias=False)
        self.norm2 = nn.GroupNorm(cfg.num_groups, out_channels, eps=cfg.norm_eps)
        self.conv2 = TimeConv3d(out_channels, out_channels, kernel, bias=False)
        self.shortcut = (
            TimeConv3d(in_channels, out_channels, 1, bias=False)
            if in_channels != out_channels
            else None
        )
        self.fused = False
        self.nhwc_ops = False
        self.checkpointing = False

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(self._forward, x_BCTHW, use_reentrant=False)
        return self._forward(x_BCTHW)

    def _forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        h = self.conv1(group_norm_silu(x_BCTHW, self.norm1, self.fused, self.nhwc_ops))
        h = self.conv2(group_norm_silu(h, self.norm2, self.fused, self.nhwc_ops))
        residual = x_BCTHW if self.shortcut is None else self.shortcut(x_BCTHW)
        return h + residual if torch.is_grad_enabled() else h.add_(residual)


class EncoderStage(nn.Module):
    """Res-blocks, then an optional stride-2 time down-sampling convolution."""

    def __init__(
        self, in_channels: int, out_channels: int, cfg: TemporalConfig, downsample: bool
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            ResBlock3d(in_channels if i == 0 else out_channels, out_channels, cfg)
            for i in range(cfg.num_res_blocks)
        )
        self.down = TimeConv3d(out_channels, out_channels, 3, time_stride=2) if downsample else None

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x_BCTHW = block(x_BCTHW)
        if self.down is not None:
            x_BCTHW = self.down(x_BCTHW)
        return x_BCTHW


class TemporalEncoder(nn.Module):
    """Trunk features ``[B, C_feat, 8, H, W]`` -> moments ``[B, 2*latent, 1, H, W]``."""

    def __init__(self, in_channels: int, latent_channels: int, cfg: TemporalConfig) -> None:
        super().__init__()
        widths = [cfg.filters * m for m in cfg.channel_multipliers]
        self.conv_in = TimeConv3d(in_channels, cfg.filters, 3, bias=False)
        stages, prev = [], cfg.filters
        for i, width in enumerate(widths):
            stages.append(EncoderStage(prev, width, cfg, downsample=i < len(widths) - 1))
            prev = width
        self.stages = nn.ModuleList(stages)
        self.mid = nn.ModuleList(ResBlock3d(prev, prev, cfg) for _ in range(cfg.num_res_blocks))
        self.norm_out = nn.GroupNorm(cfg.num_groups, prev, eps=cfg.norm_eps)
        self.conv_out = TimeConv3d(prev, 2 * latent_channels, 1)
        self.moments_proj = TimeConv3d(2 * latent_channels, 2 * latent_channels, 1)
        self.fused = False
        self.nhwc_ops = False

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        x_BCTHW = self.conv_in(x_BCTHW)
        for stage in self.stages:
            x_BCTHW = stage(x_BCTHW)
        for block in self.mid:
            x_BCTHW = block(x_BCTHW)
        x_BCTHW = self.conv_out(group_norm_silu(x_BCTHW, self.norm_out, self.fused, self.nhwc_ops))
        return self.moments_proj(x_BCTHW)


class NearestTimeUpsample(nn.Module):
    """Repeat every frame twice (nearest up-sampling in time), then a res-block."""

    def __init__(self, channels: int, cfg: TemporalConfig) -> None:
        super().__init__()
        self.block = ResBlock3d(channels, channels, cfg)

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x_BCTHW.shape
        # Written into a buffer of x's memory format (repeat_interleave returns NCDHW).
        out = _empty_like_layout(x_BCTHW, (b, c, 2 * t, h, w))
        pairs = out.view(b, c, t, 2, h, w)
        pairs.copy_(x_BCTHW.unsqueeze(3).expand(b, c, t, 2, h, w))
        return self.block(out)


class DepthToSpaceTime(nn.Module):
    """Conv to 2x channels, then move channel pairs into time: ``[B,2C,T] -> [B,C,2T]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj = TimeConv3d(channels, 2 * channels, 3)

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        y = self.proj(x_BCTHW)
        b, c2, t, h, w = y.shape
        # channel index = c * 2 + s  ->  time index = t * 2 + s (one copy, keeping y's layout)
        out = _empty_like_layout(y, (b, c2 // 2, 2 * t, h, w))
        out.view(b, c2 // 2, t, 2, h, w).copy_(y.view(b, c2 // 2, 2, t, h, w).transpose(2, 3))
        return out


class DecoderStage(nn.Module):
    """Res-blocks, then an optional depth-to-space time up-sampling."""

    def __init__(
        self, in_channels: int, out_channels: int, cfg: TemporalConfig, upsample: bool
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            ResBlock3d(in_channels if i == 0 else out_channels, out_channels, cfg)
            for i in range(cfg.num_res_blocks)
        )
        self.up = DepthToSpaceTime(out_channels) if upsample else None

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x_BCTHW = block(x_BCTHW)
        if self.up is not None:
            x_BCTHW = self.up(x_BCTHW)
        return x_BCTHW


class TemporalDecoder(nn.Module):
    """Latents ``[B, latent, R, H, W]`` -> trunk features ``[B, C_feat, 8R, H, W]``."""

    def __init__(self, out_channels: int, latent_channels: int, cfg: TemporalConfig) -> None:
        super().__init__()
        widths = [cfg.filters * m for m in cfg.channel_multipliers]
        top = widths[-1]
        self.latent_proj = TimeConv3d(latent_channels, latent_channels, 1)
        self.conv_in = TimeConv3d(latent_channels, top, 3)
        self.mid = nn.ModuleList(ResBlock3d(top, top, cfg) for _ in range(cfg.num_res_blocks))
        self.mid_up = NearestTimeUpsample(top, cfg)
        # Stages run deepest first; depth-to-space after all but the last two (the nearest
        # up-sampling above is the third time doubling).
        n = len(widths)
        stages, prev = [], top
        for k, i in enumerate(reversed(range(n))):
            stages.append(DecoderStage(prev, widths[i], cfg, upsample=k < n - 2))
            prev = widths[i]
        self.stages = nn.ModuleList(stages)
        self.norm_out = nn.GroupNorm(cfg.num_groups, prev, eps=cfg.norm_eps)
        self.conv_out = TimeConv3d(prev, out_channels, 3)
        self.fused = False
        self.nhwc_ops = False

    def forward(self, z_BCTHW: torch.Tensor) -> torch.Tensor:
        x_BCTHW = self.conv_in(self.latent_proj(z_BCTHW))
        for block in self.mid:
            x_BCTHW = block(x_BCTHW)
        x_BCTHW = self.mid_up(x_BCTHW)
        for stage in self.stages:
            x_BCTHW = stage(x_BCTHW)
        return self.conv_out(group_norm_silu(x_BCTHW, self.norm_out, self.fused, self.nhwc_ops))


def set_fused_group_norm_silu(module: nn.Module, fused: bool) -> None:
    """Switch every temporal block of ``module`` to (or from) the fused GroupNorm+SiLU."""
    for m in module.modules():
        if hasattr(m, "fused"):
            m.fused = fused


def set_checkpointing(module: nn.Module, enabled: bool) -> None:
    """Recompute (or keep) the activations of every res-block of ``module`` in backward."""
    for m in module.modules():
        if isinstance(m, ResBlock3d):
            m.checkpointing = enabled


def set_nhwc_ops(module: nn.Module, enabled: bool) -> None:
    """Switch every block of ``module`` to (or from) the channels-last inference kernels."""
    for m in module.modules():
        if hasattr(m, "nhwc_ops"):
            m.nhwc_ops = enabled
