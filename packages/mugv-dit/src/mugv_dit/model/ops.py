"""Elementwise DiT ops with a switch between plain PyTorch and mugv_kernels fused versions.

The plain math (LayerNorm, RMSNorm, RoPE, branch selection) is :mod:`mugv_kernels.dit_ops` /
:mod:`mugv_kernels.rope`, shared with mugv-infer's transformer. Every op here has a torch path that is the numerical reference. ``fused=True`` routes to
``mugv_kernels`` when it provides the op and raises a clear error when it does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import mugv_kernels
import torch
from mugv_kernels.dit_ops import layer_norm, rms_norm, select_branch
from mugv_kernels.rope import apply_rope_interleaved


def _kernel(name: str):
    fn = getattr(mugv_kernels, name, None)
    if fn is None:
        raise RuntimeError(
            f"runtime.fused_ops=true but this mugv_kernels has no {name!r}; "
            "set runtime.fused_ops=false"
        )
    return fn


def modulated_layer_norm(
    x_BND: torch.Tensor,
    shift_B2D: torch.Tensor,
    scale_B2D: torch.Tensor,
    clean_BN: torch.Tensor,
    eps: float,
    *,
    fused: bool = False,
) -> torch.Tensor:
    """``LN(x) * (1 + scale) + shift`` (adaLN); shift/scale per branch ``[B, 2, D]`` (t, t=0)
    chosen per token by ``clean_BN`` (True: the token takes the t=0 branch)."""
    if fused:
        return _kernel("modulated_layer_norm")(
            x_BND, shift_B2D, scale_B2D, token_branch=clean_BN, eps=eps
        )
    shift = select_branch(shift_B2D, clean_BN).to(x_BND.dtype)
    scale = select_branch(scale_B2D, clean_BN).to(x_BND.dtype)
    return layer_norm(x_BND, eps) * (1 + scale) + shift


@dataclass(frozen=True)
class ModulatedInput:
    """An activation whose modulated LayerNorm the consuming linear layer applies itself.

    :func:`mugv_dit.model.attention.column_forward` hands it to
    :func:`mugv_kernels.ln_linear.modulated_ln_linear` (runtime ``fused_ln_linear``; ``method``
    = runtime ``ln_linear_method``: the norm inside the GEMM's prologue, or recomputed in the
    backward) when the layer is a plain linear, else it calls :meth:`materialize` first.
    ``stats``: the rows' ``(mean, rstd)`` when a residual kernel computed them along with ``x``.
    """

    x_BND: torch.Tensor
    shift_B2D: torch.Tensor
    scale_B2D: torch.Tensor
    clean_BN: torch.Tensor
    eps: float
    fused: bool
    stats: tuple[torch.Tensor, torch.Tensor] | None = None
    method: str = "fused"

    def materialize(self) -> torch.Tensor:
        """The normalised, modulated activation (what the unfused path feeds the linear)."""
        return modulated_layer_norm(
            self.x_BND, self.shift_B2D, self.scale_B2D, self.clean_BN, self.eps, fused=self.fused
        )

    def linear(self, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``F.linear(self.materialize(), weight, bias)`` with the norm in the GEMM prologue
        (Triton on CUDA; the unfused reference elsewhere)."""
        from mugv_kernels.ln_linear import modulated_ln_linear

        return modulated_ln_linear(
            self.x_BND, self.shift_B2D, self.scale_B2D, weight, bias,
            token_branch=self.clean_BN, eps=self.eps, stats=self.stats, method=self.method,
        )  # fmt: skip


def residual_modulated_input(
    x_BND: torch.Tensor,
    y_BND: torch.Tensor,
    shift_B2D: torch.Tensor,
    scale_B2D: torch.Tensor,
    clean_BN: torch.Tensor,
    eps: float,
    *,
    fused: bool = False,
    method: str = "fused",
) -> tuple[torch.Tensor, ModulatedInput]:
    """``h = x + y`` and h's modulated LN left to the consuming linear (see
    :class:`ModulatedInput`); for the fused method the residual kernel also writes the rows'
    statistics."""
    from mugv_kernels.ln_linear import residual_ln_stats

    if method == "fused":
        h, stats = residual_ln_stats(x_BND, y_BND, eps=eps)
    else:
        h, stats = x_BND + y_BND, None
    return h, ModulatedInput(h, shift_B2D, scale_B2D, clean_BN, eps, fused, stats, method)


def residual_modulated_layer_norm(
    x_BND: torch.Tensor,
    y_BND: torch.Tensor,
    shift_B2D: torch.Tensor,
    scale_B2D: torch.Tensor,
    clean_BN: torch.Tensor,
    eps: float,
    *,
    fused: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``h = x + y`` and the modulated LN of ``h``, fused in one pass when ``fused``."""
    if fused:
        ones = torch.ones_like(shift_B2D)
        return _kernel("gated_residual_modulated_norm")(
            x_BND, y_BND, ones, shift_B2D, scale_B2D, token_branch=clean_BN, eps=eps
        )
    h = x_BND + y_BND
    return h, modulated_layer_norm(h, shift_B2D, scale_B2D, clean_BN, eps)


def gated_residual(
    x_BND: torch.Tensor, y_BND: torch.Tensor, gate_B2D: torch.Tensor, clean_BN: torch.Tensor
) -> torch.Tensor:
    """``x + gate * y`` (the adaLN gated residual) with a per-branch gate."""
    return x_BND + select_branch(gate_B2D, clean_BN).to(x_BND.dtype) * y_BND


def gated_residual_layer_norm(
    x_BND: torch.Tensor,
    y_BND: torch.Tensor,
    gate_B2D: torch.Tensor,
    clean_BN: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    *,
    fused: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``h = x + gate * y`` (per-branch gate) and the affine ``LN(h) * weight + bias``.

    Fused, this is the kernel's gated residual + modulated LN with ``scale = weight - 1`` and
    ``shift = bias`` (the same for both branches): one pass instead of two."""
    if fused:
        b, d = x_BND.shape[0], x_BND.shape[-1]
        shift = bias.to(gate_B2D.dtype).expand(b, 2, d)
        scale = (weight.to(gate_B2D.dtype) - 1).expand(b, 2, d)
        return _kernel("gated_residual_modulated_norm")(
            x_BND, y_BND, gate_B2D, shift, scale, token_branch=clean_BN, eps=eps
        )
    h = gated_residual(x_BND, y_BND, gate_B2D, clean_BN)
    return h, layer_norm(h, eps, weight, bias)


def qk_rmsnorm_rope(
    q_BNHD: torch.Tensor,
    k_BNHD: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    cos_BNK: torch.Tensor,
    sin_BNK: torch.Tensor,
    eps: float,
    *,
    fused: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head RMSNorm of q and k followed by interleaved 3D RoPE."""
    if fused:
        return _kernel("qk_rmsnorm_rope3d")(
            q_BNHD, k_BNHD, q_weight, k_weight, cos_BNK, sin_BNK, eps=eps
        )
    q = apply_rope_interleaved(rms_norm(q_BNHD, q_weight, eps), cos_BNK, sin_BNK)
    k = apply_rope_interleaved(rms_norm(k_BNHD, k_weight, eps), cos_BNK, sin_BNK)
    return q, k
