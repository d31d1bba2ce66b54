"""MUG-DiT's plain-PyTorch elementwise math, the one copy for training and inference.

mugv-dit's Megatron model and mugv-infer's diffusers transformer are the same network; the
small pure functions both apply live here, so the two compute bitwise the same numbers. The
fused Triton versions (:mod:`mugv_kernels.modulated_norm`, :mod:`mugv_kernels.qk_norm_rope`)
are checked against these and :mod:`mugv_kernels.reference`.

Legend: B batch, N tokens, D channels, M video tokens, P patch volume x channels,
C latent channels, T/H/W latent grid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float32, or float64 when the input is float64."""
    return torch.promote_types(dtype, torch.float32)


def layer_norm(x_BND: torch.Tensor, eps: float, weight=None, bias=None) -> torch.Tensor:
    """LayerNorm over the last dim, computed in float32 (or wider), returned in the input dtype."""
    acc = acc_dtype(x_BND.dtype)
    w = None if weight is None else weight.to(acc)
    b = None if bias is None else bias.to(acc)
    return F.layer_norm(x_BND.to(acc), x_BND.shape[-1:], w, b, eps).to(x_BND.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim in float32 (as the release), scaled by ``weight``."""
    acc = acc_dtype(x.dtype)
    xa = x.to(acc)
    xa = xa * torch.rsqrt(xa.pow(2).mean(-1, keepdim=True) + eps)
    return (weight.to(acc) * xa).to(x.dtype)


def select_branch(value_B2D: torch.Tensor, clean_BN: torch.Tensor) -> torch.Tensor:
    """Per-token vector ``[B, N, D]``: branch 0 (noisy, t) or branch 1 (clean, t=0)."""
    return torch.where(clean_BN[..., None], value_B2D[:, 1:2], value_B2D[:, 0:1])


def sinusoidal_embedding(values_B: torch.Tensor, dim: int, max_period: float = 10000.0):
    """``[cos, sin]`` features of scalars (GLIDE/DiT convention) -> ``[B, dim]`` (float32 or
    wider): feature ``i < dim/2`` is ``cos(v * max_period**(-i / (dim/2)))``, then the sines."""
    half = dim // 2
    acc = acc_dtype(values_B.dtype)
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=acc, device=values_B.device) / half
    )
    args = values_B.to(acc)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def patchify(x_BCTHW: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """``[B, C, T, H, W]`` -> ``[B, T'*H'*W', C*pt*ph*pw]`` (time-major tokens)."""
    b, c, t, h, w = x_BCTHW.shape
    pt, ph, pw = patch
    if t % pt or h % ph or w % pw:
        raise ValueError(f"latent grid (T,H,W)=({t},{h},{w}) not divisible by patch {patch}")
    x = x_BCTHW.reshape(b, c, t // pt, pt, h // ph, ph, w // pw, pw)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(b, (t // pt) * (h // ph) * (w // pw), c * pt * ph * pw)


def unpatchify(
    x_BMP: torch.Tensor, grid_thw: tuple[int, int, int], patch: tuple[int, int, int], channels: int
) -> torch.Tensor:
    """``[B, M, pt*ph*pw*C]`` (patch position major, then channel) -> ``[B, C, T, H, W]``."""
    b = x_BMP.shape[0]
    gt, gh, gw = grid_thw
    pt, ph, pw = patch
    x = x_BMP.reshape(b, gt, gh, gw, pt, ph, pw, channels)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, channels, gt * pt, gh * ph, gw * pw)


__all__ = [
    "acc_dtype",
    "layer_norm",
    "patchify",
    "rms_norm",
    "select_branch",
    "sinusoidal_embedding",
    "unpatchify",
]
