"""``nn.Module`` wrappers of the fused ops, for model code that wants modules and state dicts."""

from __future__ import annotations

import torch
from torch import nn

from mugv_kernels.group_norm import group_norm_silu
from mugv_kernels.modulated_norm import modulated_layer_norm
from mugv_kernels.qk_norm_rope import qk_rmsnorm_rope3d


class ModulatedLayerNorm(nn.Module):
    """LayerNorm without affine, modulated by adaLN ``shift``/``scale`` given at call time.

    Args:
        hidden_size: ``D``, checked against the input's last dim.
        eps: LayerNorm epsilon.
        use_triton: ``None`` (auto), ``True`` or ``False``; see
            :func:`mugv_kernels.modulated_layer_norm`.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6, use_triton: bool | None = None):
        super().__init__()
        self.hidden_size = int(hidden_size)
        self.eps = float(eps)
        self.use_triton = use_triton

    def forward(
        self,
        x: torch.Tensor,
        shift: torch.Tensor,
        scale: torch.Tensor,
        token_branch: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if x.shape[-1] != self.hidden_size:
            raise ValueError(f"expected hidden size {self.hidden_size}, got {tuple(x.shape)}")
        return modulated_layer_norm(
            x, shift, scale, token_branch=token_branch, eps=self.eps, use_triton=self.use_triton
        )

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}, use_triton={self.use_triton}"


class QKRMSNormRoPE3D(nn.Module):
    """Per-head RMSNorm of q and k (learned weights ``q_weight``, ``k_weight`` of ``[Dh]``,
    initialised to ones) followed by interleaved 3D RoPE from given ``cos``/``sin`` tables."""

    def __init__(self, head_dim: int, eps: float = 1e-6, use_triton: bool | None = None):
        super().__init__()
        self.head_dim = int(head_dim)
        self.eps = float(eps)
        self.use_triton = use_triton
        self.q_weight = nn.Parameter(torch.ones(self.head_dim))
        self.k_weight = nn.Parameter(torch.ones(self.head_dim))

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return qk_rmsnorm_rope3d(
            q, k, self.q_weight, self.k_weight, cos, sin, eps=self.eps, use_triton=self.use_triton
        )

    def extra_repr(self) -> str:
        return f"{self.head_dim}, eps={self.eps}, use_triton={self.use_triton}"


class GroupNormSiLU(nn.GroupNorm):
    """``nn.GroupNorm`` followed by SiLU, fused. Same parameters and state dict as
    ``nn.GroupNorm`` (``weight``, ``bias``), so checkpoints of the unfused pair load as is."""

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-6,
        affine: bool = True,
        use_triton: bool | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__(
            num_groups, num_channels, eps=eps, affine=affine, device=device, dtype=dtype
        )
        self.use_triton = use_triton

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm_silu(
            x, self.num_groups, self.weight, self.bias, eps=self.eps, use_triton=self.use_triton
        )
