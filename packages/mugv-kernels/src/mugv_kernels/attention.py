"""Experimental: flash attention for head dims that are not a power of two (stretch goal 6).

``attention(q, k, v)`` with ``q, k, v [B, L, H, Dh]`` (the layout after
:func:`mugv_kernels.qk_rmsnorm_rope3d`), non-causal, no mask. The Triton kernels split the head
dim (72 -> 64 + 8 padded to 16) instead of padding it to 128; the reference is PyTorch SDPA.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mugv_kernels._dispatch import use_triton_for
from mugv_kernels._launch import next_pow2

#: block sizes (forward M x N, backward dK/dV M x N, backward dQ M x N), warps, stages
ATTN_TUNING: dict[str, int] = {
    "fwd_m": 128, "fwd_n": 64, "fwd_warps": 8, "fwd_stages": 3,
    "dkdv_m": 64, "dkdv_n": 128, "dkdv_warps": 8, "dkdv_stages": 2,
    "dq_m": 128, "dq_n": 64, "dq_warps": 8, "dq_stages": 2,
}  # fmt: skip


def _split(head_dim: int) -> tuple[int, int]:
    d1 = 1 << (head_dim.bit_length() - 1)
    d1 = max(16, d1)
    return d1, max(16, next_pow2(max(1, head_dim - d1)))


def _blocks(seq_len: int, m: int, n: int, dtype: torch.dtype) -> tuple[int, int]:
    cap = max(16, next_pow2(seq_len))
    if dtype == torch.float32:  # fp32 tiles take twice the shared memory
        cap = min(cap, 64)
    return min(m, cap), min(n, cap)


def _stages(stages: int, dtype: torch.dtype) -> int:
    return 1 if dtype == torch.float32 else stages


def _align(*tensors: torch.Tensor) -> int:
    """8 if every head of every tensor starts on a multiple of 8 elements (last stride 1)."""
    ok = all(
        t.stride(-1) == 1
        and t.stride(0) % 8 == 0
        and t.stride(2) % 8 == 0
        and t.data_ptr() % (8 * t.element_size()) == 0
        for t in tensors
    )
    return 8 if ok else 1


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale=None):
    """SDPA on ``[B, L, H, Dh]`` tensors (float64 inputs compute in float64)."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale
    )
    return out.transpose(1, 2)


class FlashAttentionFn(torch.autograd.Function):
    """Triton forward/backward of :func:`attention`."""

    @staticmethod
    def forward(ctx, q, k, v, scale):
        from mugv_kernels import _triton_attention as kern

        b, seq_len, heads, head_dim = q.shape
        d1, d2 = _split(head_dim)
        t = ATTN_TUNING
        bm, bn = _blocks(seq_len, t["fwd_m"], t["fwd_n"], q.dtype)
        out = torch.empty((b, seq_len, heads, head_dim), device=q.device, dtype=q.dtype)
        lse = torch.empty((b * heads, seq_len), device=q.device, dtype=torch.float32)
        kern.attn_fwd_kernel[(-(-seq_len // bm), b * heads)](
            q, k, v, out, lse, seq_len, heads, head_dim, scale * math.log2(math.e),
            *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            D1=d1, D2=d2, BLOCK_M=bm, BLOCK_N=bn, ALIGN=_align(q, k, v, out),
            num_warps=t["fwd_warps"], num_stages=_stages(t["fwd_stages"], q.dtype),
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, dout):
        from mugv_kernels import _triton_attention as kern

        q, k, v, out, lse = ctx.saved_tensors
        b, seq_len, heads, head_dim = q.shape
        d1, d2 = _split(head_dim)
        t = ATTN_TUNING
        delta = torch.empty_like(lse)
        kern.attn_bwd_delta_kernel[(-(-seq_len // 64), b * heads)](
            out, dout, delta, seq_len, heads, head_dim, *out.stride(), *dout.stride(),
            BLOCK_M=64, BLOCK_D=next_pow2(head_dim),
        )  # fmt: skip
        dq = torch.empty((b, seq_len, heads, head_dim), device=q.device, dtype=q.dtype)
        dk = torch.empty_like(dq)
        dv = torch.empty_like(dq)
        qk_scale = ctx.scale * math.log2(math.e)
        strides = (*q.stride(), *k.stride(), *v.stride(), *dout.stride())
        align = _align(q, k, v, dout)
        bm, bn = _blocks(seq_len, t["dkdv_m"], t["dkdv_n"], q.dtype)
        kern.attn_bwd_dkdv_kernel[(-(-seq_len // bn), b * heads)](
            q, k, v, dout, lse, delta, dk, dv, seq_len, heads, head_dim, qk_scale, ctx.scale,
            *strides, D1=d1, D2=d2, BLOCK_M=bm, BLOCK_N=bn, ALIGN=align,
            num_warps=t["dkdv_warps"], num_stages=_stages(t["dkdv_stages"], q.dtype),
        )  # fmt: skip
        bm, bn = _blocks(seq_len, t["dq_m"], t["dq_n"], q.dtype)
        kern.attn_bwd_dq_kernel[(-(-seq_len // bm), b * heads)](
            q, k, v, dout, lse, delta, dq, seq_len, heads, head_dim, qk_scale, ctx.scale,
            *strides, D1=d1, D2=d2, BLOCK_M=bm, BLOCK_N=bn, ALIGN=align,
            num_warps=t["dq_warps"], num_stages=_stages(t["dq_stages"], q.dtype),
        )  # fmt: skip
        return dq, dk, dv, None


_triton_attention = torch.compiler.disable(FlashAttentionFn.apply)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    use_triton: bool | None = False,
) -> torch.Tensor:
    """Softmax attention ``softmax(q k^T * scale) v`` over ``[B, L, H, Dh]`` tensors.

    Experimental: ``use_triton`` defaults to ``False`` (SDPA); pass ``True`` or ``None`` to use
    the Triton kernels. ``Dh`` must be <= 128 and q, k, v share one shape.
    """
    if q.ndim != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"q, k, v must share one shape [B, L, H, Dh], got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    head_dim = q.shape[-1]
    if not 16 <= head_dim <= 128:
        raise ValueError(f"head dim must be within [16, 128], got {head_dim}")
    scale = float(scale) if scale is not None else head_dim**-0.5
    if not use_triton_for(use_triton, q, "attention"):
        return attention_ref(q, k, v, scale=scale)
    return _triton_attention(q, k, v, scale)
