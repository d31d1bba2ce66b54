"""QK RMSNorm + 3D RoPE (kernel 3): public function and its Triton autograd Function."""

from __future__ import annotations

import torch

from mugv_kernels._dispatch import use_triton_for
from mugv_kernels._launch import TUNING, next_pow2, sm_count
from mugv_kernels.reference import check_qk, qk_rmsnorm_rope3d_ref


def _tiling(rows: int, head_dim: int, device: torch.device) -> tuple[int, int, int, int]:
    """``(BLOCK_P, BLOCK_R, rows_per_prog, num_warps)`` for ``rows`` rows of ``head_dim``."""
    tune = TUNING["qk"]
    block_p = next_pow2(head_dim // 2)
    block_r = max(1, min(128, tune["tile_elems"] // block_p, next_pow2(rows)))
    target = tune["programs_per_sm"] * sm_count(device)
    per_prog = max(block_r, -(-rows // target))
    per_prog = -(-per_prog // block_r) * block_r
    return block_p, block_r, per_prog, max(4, min(16, block_r * block_p // tune["warp_elems"]))


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


def _fwd(
    x: torch.Tensor, w: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float, vec: bool
):
    from mugv_kernels import _triton_qkrope as kern

    b, seq_len, heads, head_dim = x.shape
    rows = b * seq_len * heads
    out = torch.empty((b, seq_len, heads, head_dim), device=x.device, dtype=x.dtype)
    rstd = torch.empty(rows, device=x.device, dtype=torch.float32)
    block_p, block_r, per_prog, warps = _tiling(rows, head_dim, x.device)
    kern.rmsnorm_rope_fwd_kernel[(-(-rows // per_prog),)](
        x, w, cos, sin, out, rstd,
        rows, heads, seq_len, per_prog, eps,
        *x.stride(), *_table_strides(cos), *_table_strides(sin),
        P=head_dim // 2, X_ALIGN=_align(x), DO_ALIGN=1, T_ALIGN=_table_align(cos, sin),
        VEC=vec, BLOCK_R=block_r, BLOCK_P=block_p, num_warps=warps,
    )  # fmt: skip
    return out, rstd


def _bwd(dout, x, w, cos, sin, rstd, vec: bool):
    from mugv_kernels import _triton_qkrope as kern

    b, seq_len, heads, head_dim = x.shape
    rows = b * seq_len * heads
    block_p, block_r, per_prog, warps = _tiling(rows, head_dim, x.device)
    grid = -(-rows // per_prog)
    dx = torch.empty((b, seq_len, heads, head_dim), device=x.device, dtype=x.dtype)
    dw = torch.empty((grid, head_dim), device=x.device, dtype=torch.float32)
    kern.rmsnorm_rope_bwd_kernel[(grid,)](
        dout, x, w, cos, sin, rstd, dx, dw,
        rows, heads, seq_len, per_prog,
        *dout.stride(), *x.stride(), *_table_strides(cos), *_table_strides(sin),
        P=head_dim // 2, X_ALIGN=_align(x), DO_ALIGN=_align(dout),
        T_ALIGN=_table_align(cos, sin), VEC=vec, BLOCK_R=block_r, BLOCK_P=block_p, num_warps=warps,
    )  # fmt: skip
    return dx, dw.sum(dim=0).to(w.dtype)


class QKRMSNormRoPEFn(torch.autograd.Function):
    """Triton forward/backward of :func:`qk_rmsnorm_rope3d` (cos/sin are constants)."""

    @staticmethod
    def forward(ctx, q, k, q_weight, k_weight, cos, sin, eps):
        ctx.set_materialize_grads(False)
        ctx.vec = bool(TUNING["qk"]["vec"])
        q_out, q_rstd = _fwd(q, q_weight, cos, sin, eps, ctx.vec)
        k_out, k_rstd = _fwd(k, k_weight, cos, sin, eps, ctx.vec)
        ctx.save_for_backward(q, k, q_weight, k_weight, cos, sin, q_rstd, k_rstd)
        return q_out, k_out

    @staticmethod
    def backward(ctx, dq_out, dk_out):
        q, k, q_weight, k_weight, cos, sin, q_rstd, k_rstd = ctx.saved_tensors
        dq = dqw = dk = dkw = None
        if dq_out is not None:
            dq, dqw = _bwd(dq_out, q, q_weight, cos, sin, q_rstd, ctx.vec)
        if dk_out is not None:
            dk, dkw = _bwd(dk_out, k, k_weight, cos, sin, k_rstd, ctx.vec)
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
