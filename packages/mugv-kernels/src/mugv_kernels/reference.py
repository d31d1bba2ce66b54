"""Exact PyTorch references of every fused kernel.

These run on any device, are differentiable through plain autograd, and are the test oracle
(called on float64 inputs they compute in float64). On bf16/fp16/fp32 inputs they accumulate
in float32 and round once to the input dtype, like the Triton kernels.

Legend: ``x_NLD`` etc. as in :mod:`mugv_kernels._layout`; ``Dh`` = head dim, ``P = Dh // 2``
rotary pairs; ``C`` channels, ``G`` groups.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mugv_kernels._layout import (
    Layout,
    check_token_branch,
    expand_modulation,
    layouts_agree,
    modulation_layout,
)


def acc_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def resolve_layout(
    x: torch.Tensor,
    mods: dict[str, torch.Tensor],
    token_branch: torch.Tensor | None,
) -> Layout:
    """Check the modulation tensors of one call and return their common layout."""
    if token_branch is not None:
        check_token_branch(x, token_branch)
    return layouts_agree(
        {name: modulation_layout(x, mod, name, token_branch) for name, mod in mods.items()}
    )


def per_token(
    mod: torch.Tensor, x: torch.Tensor, layout: Layout, token_branch: torch.Tensor | None
) -> torch.Tensor:
    """The modulation vector each token of ``x`` uses, as a ``[..., L, D]`` tensor."""
    if layout == "branch":
        assert token_branch is not None
        mask = token_branch.unsqueeze(-1)
        return torch.where(mask, mod[..., 1:2, :], mod[..., 0:1, :]).expand(x.shape)
    return expand_modulation(mod, x, layout)


def modulated_layer_norm_ref(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    *,
    token_branch: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """``LN(x) * (1 + scale) + shift`` with LN over the last dim, no affine."""
    layout = resolve_layout(x, {"shift": shift, "scale": scale}, token_branch)
    dtype = acc_dtype(x, shift, scale)
    xf = x.to(dtype)
    x_hat = F.layer_norm(xf, (x.shape[-1],), eps=eps)
    scale_t = per_token(scale.to(dtype), xf, layout, token_branch)
    shift_t = per_token(shift.to(dtype), xf, layout, token_branch)
    return (x_hat * (1 + scale_t) + shift_t).to(x.dtype)


def gated_residual_modulated_norm_ref(
    x: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    token_branch: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``h = x + gate * (y + bias)`` (rounded to x's dtype) and ``LN(h) * (1 + scale) + shift``.

    The norm is taken of ``h`` as returned (after rounding), so the result equals running the
    unfused residual add and :func:`modulated_layer_norm_ref` one after the other.
    """
    if y.shape != x.shape:
        raise ValueError(f"y must have x's shape {tuple(x.shape)}, got {tuple(y.shape)}")
    if bias is not None and tuple(bias.shape) != (x.shape[-1],):
        raise ValueError(f"bias must have shape [{x.shape[-1]}], got {tuple(bias.shape)}")
    layout = resolve_layout(x, {"gate": gate, "shift": shift, "scale": scale}, token_branch)
    tensors = [x, y, gate, shift, scale] + ([bias] if bias is not None else [])
    dtype = acc_dtype(*tensors)
    xf = x.to(dtype)
    yf = y.to(dtype)
    if bias is not None:
        yf = yf + bias.to(dtype)
    h = (xf + per_token(gate.to(dtype), xf, layout, token_branch) * yf).to(x.dtype)
    h_norm = modulated_layer_norm_ref(h, shift, scale, token_branch=token_branch, eps=eps)
    return h, h_norm


def check_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
) -> None:
    """Validate the shapes of a QK-norm + RoPE call; raises ``ValueError`` naming the field."""
    for name, t in (("q", q), ("k", k)):
        if t.ndim != 4:
            raise ValueError(f"{name} must have shape [B, L, H, Dh], got {tuple(t.shape)}")
    b, seq_len, _, head_dim = q.shape
    if k.shape[0] != b or k.shape[1] != seq_len or k.shape[3] != head_dim:
        raise ValueError(
            f"k must have shape [{b}, {seq_len}, Hk, {head_dim}] like q, got {tuple(k.shape)}"
        )
    if head_dim % 2:
        raise ValueError(f"head dim must be even for rotary pairs, got {head_dim}")
    for name, w in (("q_weight", q_weight), ("k_weight", k_weight)):
        if tuple(w.shape) != (head_dim,):
            raise ValueError(f"{name} must have shape [{head_dim}], got {tuple(w.shape)}")
    pairs = head_dim // 2
    for name, t in (("cos", cos), ("sin", sin)):
        shape = tuple(t.shape)
        if shape != (seq_len, pairs) and shape not in ((b, seq_len, pairs), (1, seq_len, pairs)):
            raise ValueError(
                f"{name} must have shape [L={seq_len}, Dh//2={pairs}] or "
                f"[B={b} (or 1), L, Dh//2], got {shape}"
            )


def rms_norm_rope_ref(
    x_BLHD: torch.Tensor,
    weight: torch.Tensor,
    cos_LP: torch.Tensor,
    sin_LP: torch.Tensor,
    *,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Per-head RMSNorm with weight, then interleaved rotary: pair ``(2i, 2i+1)`` = ``(a, b)``
    becomes ``(a cos - b sin, a sin + b cos)`` with ``cos/sin[l, i]`` (or ``[b, l, i]``)."""
    dtype = acc_dtype(x_BLHD, weight, cos_LP)
    xf = x_BLHD.to(dtype)
    rstd = torch.rsqrt(xf.square().mean(dim=-1, keepdim=True) + eps)
    u = xf * rstd * weight.to(dtype)
    u_pairs = u.unflatten(-1, (-1, 2))
    a, b = u_pairs[..., 0], u_pairs[..., 1]
    cos = cos_LP.to(dtype).unsqueeze(-2)  # [L, 1, P] or [B, L, 1, P]
    sin = sin_LP.to(dtype).unsqueeze(-2)
    out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
    return out.to(x_BLHD.dtype)


def qk_rmsnorm_rope3d_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm (per head, learned weight) then interleaved 3D RoPE, for q and k."""
    check_qk(q, k, q_weight, k_weight, cos, sin)
    return (
        rms_norm_rope_ref(q, q_weight, cos, sin, eps=eps),
        rms_norm_rope_ref(k, k_weight, cos, sin, eps=eps),
    )


def check_group_norm(
    x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None
) -> None:
    """Validate a GroupNorm call; raises ``ValueError`` naming the field."""
    if x.ndim < 3:
        raise ValueError(f"x must have shape [N, C, *spatial], got {tuple(x.shape)}")
    channels = x.shape[1]
    if num_groups <= 0 or channels % num_groups:
        raise ValueError(f"num_groups={num_groups} must divide the {channels} channels")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (channels,):
            raise ValueError(f"{name} must have shape [{channels}], got {tuple(t.shape)}")


def group_norm_silu_ref(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    *,
    eps: float = 1e-6,
) -> torch.Tensor:
    """``silu(GroupNorm(x))`` for channels-first ``x [N, C, *spatial]``."""
    check_group_norm(x, num_groups, weight, bias)
    dtype = acc_dtype(x)
    w = weight.to(dtype) if weight is not None else None
    b = bias.to(dtype) if bias is not None else None
    return F.silu(F.group_norm(x.to(dtype), num_groups, w, b, eps)).to(x.dtype)


def bias_residual_ref(
    x: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor
) -> torch.Tensor:
    """``x + bias + residual`` for ``x [N, C, *spatial]`` (``bias [C]`` or ``None``), in the
    accumulation dtype, rounded once to ``x``'s dtype."""
    dtype = acc_dtype(x)
    out = x.to(dtype) + residual.to(dtype)
    if bias is not None:
        out = out + bias.to(dtype).view(1, -1, *([1] * (x.ndim - 2)))
    return out.to(x.dtype)
