"""Input/output parts of MUG-DiT: patch embedding, timestep/fps embeddings, text embedder,
final layer ((un)patchify: :mod:`mugv_kernels.dit_ops`). These are small and replicated on every TP rank."""

from __future__ import annotations

import torch
from mugv_kernels.dit_ops import layer_norm, sinusoidal_embedding
from torch import nn


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
