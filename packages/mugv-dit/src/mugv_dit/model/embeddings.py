"""Input/output parts of MUG-DiT: patch embedding, timestep/fps embeddings, text embedder,
final layer, and (un)patchify. These are small and replicated on every TP rank."""

from __future__ import annotations

import math

import torch
from torch import nn

from mugv_dit.model.ops import layer_norm


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
    """``[B, M, pt*ph*pw*C]`` (patch-major, then channel) -> ``[B, C, T, H, W]``."""
    b = x_BMP.shape[0]
    gt, gh, gw = grid_thw
    pt, ph, pw = patch
    x = x_BMP.reshape(b, gt, gh, gw, pt, ph, pw, channels)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, channels, gt * pt, gh * ph, gw * pw)


def sinusoidal_embedding(values_B: torch.Tensor, dim: int, max_period: float = 10000.0):
    """``[cos, sin]`` features of scalars (GLIDE/DiT convention) -> ``[B, dim]`` (float32 or wider)."""
    half = dim // 2
    acc = torch.promote_types(values_B.dtype, torch.float32)
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=acc, device=values_B.device) / half
    )
    args = values_B.to(acc)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class ScalarEmbedder(nn.Module):
    """Sinusoidal features -> Linear -> SiLU -> Linear (timestep and fps embedders)."""

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.fc1 = nn.Linear(freq_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, values_B: torch.Tensor) -> torch.Tensor:
        emb = sinusoidal_embedding(values_B, self.freq_dim).to(self.fc1.weight.dtype)
        return self.fc2(nn.functional.silu(self.fc1(emb)))


class TextEmbedder(nn.Module):
    """T5 features -> LN -> MLP (GELU tanh) -> LN, with a learned null caption."""

    def __init__(self, text_dim: int, hidden: int, null_tokens: int, eps: float):
        super().__init__()
        self.eps = eps
        self.fc1 = nn.Linear(text_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.null_caption = nn.Parameter(torch.randn(null_tokens, text_dim) / text_dim**0.5)

    def forward(self, text_LC: torch.Tensor) -> torch.Tensor:
        h = layer_norm(text_LC.to(self.fc1.weight.dtype), self.eps)
        h = self.fc2(nn.functional.gelu(self.fc1(h), approximate="tanh"))
        return layer_norm(h, self.eps)


class FinalLayer(nn.Module):
    """Modulated LN (2-row table + t embedding, per-token t / t=0) -> linear to patches."""

    def __init__(self, hidden: int, patch_volume: int, out_channels: int, eps: float):
        super().__init__()
        self.eps = eps
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden) / hidden**0.5)
        self.linear = nn.Linear(hidden, patch_volume * out_channels)

    def forward(self, x_BMC, t_emb_BC, t0_emb_BC, noisy_BM1) -> torch.Tensor:
        table = self.scale_shift_table.to(t_emb_BC.dtype)
        shift_t, scale_t = (table[None] + t_emb_BC[:, None]).unbind(1)
        shift_0, scale_0 = (table[None] + t0_emb_BC[:, None]).unbind(1)
        shift = torch.where(noisy_BM1, shift_t[:, None], shift_0[:, None]).to(x_BMC.dtype)
        scale = torch.where(noisy_BM1, scale_t[:, None], scale_0[:, None]).to(x_BMC.dtype)
        return self.linear(layer_norm(x_BMC, self.eps) * (1 + scale) + shift)
