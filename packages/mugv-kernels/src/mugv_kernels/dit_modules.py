"""The small MUG-DiT input modules that training (mugv-dit) and inference (mugv-infer) share:
the scalar (timestep / fps) embedder and the text embedder. Parameter names are those of the
mugv.dit-export format, so both sides load the same state dict."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mugv_kernels.dit_ops import layer_norm, sinusoidal_embedding


class ScalarEmbedder(nn.Module):
    """Sinusoidal features -> Linear -> SiLU -> Linear (timestep and fps embedders)."""

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.fc1 = nn.Linear(freq_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, values_B: torch.Tensor) -> torch.Tensor:
        emb = sinusoidal_embedding(values_B, self.freq_dim).to(self.fc1.weight.dtype)
        return self.fc2(F.silu(self.fc1(emb)))


class TextEmbedder(nn.Module):
    """T5 features -> LN -> MLP (GELU tanh) -> LN, with a learned null caption.

    ``random_null_caption``: training initialises the null caption with ``randn / sqrt(C)``
    (drawn after the two linears, so seeded models keep their weights); inference builds it
    as zeros, to be overwritten by the loaded weights.
    """

    def __init__(
        self,
        text_dim: int,
        hidden: int,
        null_tokens: int,
        eps: float,
        *,
        random_null_caption: bool = True,
    ):
        super().__init__()
        self.eps = eps
        self.fc1 = nn.Linear(text_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        null = (
            torch.randn(null_tokens, text_dim) / text_dim**0.5
            if random_null_caption
            else torch.zeros(null_tokens, text_dim)
        )
        self.null_caption = nn.Parameter(null)

    def forward(self, text_BLC: torch.Tensor) -> torch.Tensor:
        h = layer_norm(text_BLC.to(self.fc1.weight.dtype), self.eps)
        return layer_norm(self.fc2(F.gelu(self.fc1(h), approximate="tanh")), self.eps)
