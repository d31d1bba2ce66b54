"""QK RMSNorm + 3D RoPE (kernel 3): public function and its Triton autograd Function."""

from __future__ import annotations

import torch

from mugv_kernels._dispatch import use_triton_for
from mugv_kernels._launch import TUNING, next_pow2, sm_count
from mugv_kernels.reference import check_qk, qk_rmsnorm_rope3d_ref


def _split_head_dim(head_dim: int, key: str = "qk") -> tuple[int, int]:
    """``(D1, D2)``: D1 the largest power of two <= Dh, D2 the rest padded to a power of two
    (0 when Dh is a power of two); e.g. 72 -> (64, 8). With ``TUNING[key]["split"] = 0``:
    one padded part ``(next_pow2(Dh), 0)``."""
    if not TUNING[key]["split"]:
        return next_pow2(head_dim), 0
    d1 = 1 << (head_dim.bit_length() - 1)
    return d1, (next_pow2(head_dim - d1) if head_dim > d1 else 0)


def _head_block(heads: int) -> int:
    """Heads per tile: the largest power of two dividing ``heads`` (no masked lanes), at most
    ``TUNING["qk"]["max_heads"]``; at least 4 (masked) when that divisor is smaller."""
    cap = TUNING["qk"]["max_heads"]
    bh = min(heads & -heads, cap)
    if bh < 4 < heads:
        bh = min(4, cap)
    return min(bh, next_pow2(heads))


def _tiling(tokens: int, heads: int, head_dim: int, device: torch.device, key: str):
    """``(BT, tokens_per_prog, num_warps)`` for ``tokens`` tokens of ``heads`` heads."""
    tune = TUNING[key]
    d1, d2 = _split_head_dim(head_dim, key)
    row = _head_block(heads) * (d1 + d2)
    bt = max(1, min(64, tune["tile_elems"] // row, next_pow2(tokens)))
    bt = 1 << (bt.bit_length() - 1)  # power of two
    target = tune["programs_per_sm"] * sm_count(device)
    per_prog = max(bt, -(-tokens // target))
    per_prog = -(-per_prog // bt) * bt
    warps = max(4, min(16, bt * row // tune["warp_elems"]))
    return bt, per_prog, 1 << (warps.bit_length() - 1)


def _align(t: torch.Tensor, skip_last: bool = True) -> int:
    """8 if every row offset of ``t`` (strides but the last) and its address are multiples of
    8 elements (and the last stride is 1), else 1: a promise the kernels pass to the compiler."""
    strides = t.stride()[:-1] if skip_last else t.stride()
    ok = t.stride(-1) == 1 and all(s % 8 == 0 for s in strides)
    return 8 if ok and t.data_ptr() % (8 * t.element_size()) == 0 else 1


def _table_strides(t: torch.Tensor) -> tuple[int, int, int]:
    """``(s_b, s_l, s_p)`` of a ``[L, P]`` or ``[B or 1, L, P]`` table (``s_b = 0`` if shared)."""
    if t.ndim == 2:
        return 0, t.stride(0), t.stride(1)
    return (0 if t.shape[0] == 1 else t.stride(0)), t.stride(1), t.stride(2)


def _table_align(cos: torch.Tensor, sin: torch.Tensor) -> int:
    """4 if the rows of both tables start on multiples of 4 elements, else 1."""
    ok = all(
        st[2] == 1
        and st[0] % 4 == 0
        and st[1] % 4 == 0
        and t.data_ptr() % (4 * t.element_size()) == 0
        for t, st in ((cos, _table_strides(cos)), (sin, _table_strides(sin)))
    )
    return 4 if ok else 1


def _geometry(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, key: str):
    """Launch constants shared by the forward and backward kernels."""
    head_dim = q.shape[-1]
    d1, d2 = _split_head_dim(head_dim, key)
    return {
        "HQ": q.shape[2], "HK": k.shape[2], "BHQ": _head_block(q.shape[2]),
        "BHK": _head_block(k.shape[2]), "DH": head_dim, "D1": d1, "D1V": min(d1, head_dim),
        "D2": d2,
        "Q_ALIGN": _align(q), "K_ALIGN": _align(k), "T_ALIGN": _table_align(cos, sin),
    }  # fmt: skip


def _heads(q: torch.Tensor, k: torch.Tensor) -> int:
    return max(q.shape[2], k.shape[2])


def _fwd(q, k, q_weight, k_weight, cos, sin, eps: float):
    from mugv_kernels import _triton_qkrope as kern

    b, seq_len = q.shape[:2]
    tokens = b * seq_len
    q_out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    k_out = torch.empty(k.shape, device=k.device, dtype=k.dtype)
    bt, per_prog, warps = _tiling(tokens, _heads(q, k), q.shape[-1], q.device, "qk")
    kern.qk_fwd_kernel[(-(-tokens // per_prog),)](
        q, k, q_weight, k_weight, cos, sin, q_out, k_out,
        tokens, seq_len, per_prog, eps, *q.stride(), *k.stride(),
        *_table_strides(cos), *_table_strides(sin),
        **_geometry(q, k, cos, sin, "qk"), BT=bt, num_warps=warps,
    )  # fmt: skip
    return q_out, k_out


def _bwd(dq_out, dk_out, q, k, q_weight, k_weight, cos, sin, eps: float):
    from mugv_kernels import _triton_qkrope as kern

    b, seq_len = q.shape[:2]
    tokens = b * seq_len
    bt, per_prog, warps = _tiling(tokens, _heads(q, k), q.shape[-1], q.device, "qk_bwd")
    grid = -(-tokens // per_prog)
    do_q, do_k = dq_out is not None, dk_out is not None
    dq_out = dq_out if do_q else q  # placeholders, never read
    dk_out = dk_out if do_k else k
    dq = torch.empty(q.shape, device=q.device, dtype=q.dtype) if do_q else q
    dk = torch.empty(k.shape, device=k.device, dtype=k.dtype) if do_k else k
    dw = torch.empty((grid, 2, q.shape[-1]), device=q.device, dtype=torch.float32)
    kern.qk_bwd_kernel[(grid,)](
        dq_out, dk_out, q, k, q_weight, k_weight, cos, sin, dq, dk, dw,
        tokens, seq_len, per_prog, eps, *dq_out.stride(), *dk_out.stride(),
        *q.stride(), *k.stride(), *_table_strides(cos), *_table_strides(sin),
        **_geometry(q, k, cos, sin, "qk_bwd"), DQ_ALIGN=_align(dq_out), DK_ALIGN=_align(dk_out),
        DO_Q=do_q, DO_K=do_k, P2=max(1, _split_head_dim(q.shape[-1], "qk_bwd")[1] // 2),
        DW_RED=bool(TUNING["qk_bwd"]["dw_reduce"]), BT=bt,
        num_warps=warps,
    )  # fmt: skip
    # rows of a tensor without gradient are never written: only the other row is read
    if do_q and do_k and q_weight.dtype == k_weight.dtype:
        dw_2D = dw.sum(dim=0).to(q_weight.dtype)  # one reduction and one cast for both
        return dq, dk, dw_2D[0], dw_2D[1]
    dqw = dw[:, 0].sum(dim=0).to(q_weight.dtype) if do_q else None
    dkw = dw[:, 1].sum(dim=0).to(k_weight.dtype) if do_k else None
    return (dq if do_q else None), (dk if do_k else None), dqw, dkw


class QKRMSNormRoPEFn(torch.autograd.Function):
    """Triton forward/backward of :func:`qk_rmsnorm_rope3d` (cos/sin are constants); one
    launch each for q and k together. The RMS statistics are recomputed in the backward."""

    @staticmethod
    def forward(ctx, q, k, q_weight, k_weight, cos, sin, eps):
        ctx.set_materialize_grads(False)
        q_weight, k_weight = q_weight.contiguous(), k_weight.contiguous()
        q_out, k_out = _fwd(q, k, q_weight, k_weight, cos, sin, eps)
        ctx.save_for_backward(q, k, q_weight, k_weight, cos, sin)
        ctx.eps = eps
        return q_out, k_out

    @staticmethod
    def backward(ctx, dq_out, dk_out):
        q, k, q_weight, k_weight, cos, sin = ctx.saved_tensors
        if dq_out is None and dk_out is None:
            return (None,) * 7
        dq, dk, dqw, dkw = _bwd(dq_out, dk_out, q, k, q_weight, k_weight, cos, sin, ctx.eps)
        return dq, dk, dqw, dkw, None, None, None


_triton_qk = torch.compiler.disable(QKRMSNormRoPEFn.apply)  # graph break under torch.compile


def qk_rmsnorm_rope3d(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    eps: float = 1e-6,
    use_triton: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head RMSNorm with learned weight, then interleaved 3D rotary embedding.

    Args:
        q, k: ``[B, L, H, Dh]`` (k may have another head count; any strides).
        q_weight, k_weight: RMSNorm weights ``[Dh]``.
        cos, sin: ``[L, Dh // 2]`` tables (see :func:`mugv_kernels.rope3d_frequencies`), or
            per-sample ``[B, L, Dh // 2]`` (``[1, L, Dh // 2]`` broadcasts); pair
            ``(2i, 2i+1)`` rotates by the angle of column ``i``. They are treated as constants
            by the Triton path (if they require grad the reference path is taken).
        eps: RMSNorm epsilon.
        use_triton: see :func:`mugv_kernels.modulated_layer_norm`.

    Returns ``(q_out, k_out)`` with the shapes and dtypes of q and k (fp32 inside).
    """
    check_qk(q, k, q_weight, k_weight, cos, sin)
    if (
        not use_triton_for(use_triton, q, "qk_rmsnorm_rope3d")
        or cos.requires_grad
        or sin.requires_grad
    ):
        return qk_rmsnorm_rope3d_ref(q, k, q_weight, k_weight, cos, sin, eps=eps)
    return _triton_qk(q, k, q_weight, k_weight, cos, sin, float(eps))
