"""Output part of MUG-DiT: the final layer ((un)patchify: :mod:`mugv_kernels.dit_ops`; the
timestep/fps and text embedders: :mod:`mugv_kernels.dit_modules`, shared with mugv-infer).
These are small and replicated on every TP rank."""

from __future__ import annotations

import torch
from mugv_kernels.dit_ops import layer_norm
from torch import nn


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
