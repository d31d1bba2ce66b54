"""Triton kernels of the per-head RMSNorm + interleaved 3D RoPE (kernel 3).

Geometry: ``x [B, L, H, Dh]`` with arbitrary strides is seen as ``R = B*L*H`` rows of ``Dh``;
row ``r`` is ``(b, l, h)`` with ``h = r % H``, ``l = (r // H) % L``, ``b = r // (H*L)``. Each row
is loaded as its even and odd channels (the rotary pairs ``(2i, 2i+1)``), ``P = Dh // 2``.
Program ``pid`` handles ``rows_per_prog`` rows in tiles of ``BLOCK_R``; the backward writes one
fp32 partial sum of the weight gradient per program (``[num_programs, Dh]``).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _row_offsets(rows, H, L, s_b, s_l, s_h, ALIGN: tl.constexpr):
    """Element offset of each row and its token position; ``ALIGN`` is a divisor of every
    offset that the host checked (it lets the compiler emit wide loads)."""
    h = rows % H
    bl = rows // H
    pos = bl % L
    b = bl // L
    if ALIGN > 1:  # written as a product with ALIGN so the compiler sees the divisibility
        base = (b * (s_b // ALIGN) + pos * (s_l // ALIGN) + h * (s_h // ALIGN)) * ALIGN
    else:
        base = b * s_b + pos * s_l + h * s_h
    return base, pos, b


@triton.jit
def _load_table(ptr, b, pos, s_b, s_l, s_p, offs_p, mask, ALIGN: tl.constexpr):
    """Rows of a ``[B or 1, L, P]`` cos/sin table (``s_b = 0`` for one shared table)."""
    if ALIGN > 1:
        row = (b * (s_b // ALIGN) + pos * (s_l // ALIGN)) * ALIGN
    else:
        row = b * s_b + pos * s_l
    return tl.load(ptr + row[:, None] + offs_p[None, :] * s_p, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _load_pairs(ptr, base, offs_p, mask_r, P, s_d, VEC: tl.constexpr, BLOCK_R: tl.constexpr,
                BLOCK_P: tl.constexpr):  # fmt: skip
    """Even and odd channels of a tile of rows, fp32 ``[BLOCK_R, BLOCK_P]`` each. ``VEC``
    loads whole rows (wide loads) and splits them in registers; else two strided loads."""
    if VEC:
        offs = tl.arange(0, 2 * BLOCK_P)
        mask = mask_r[:, None] & (offs < 2 * P)[None, :]
        x = tl.load(ptr + base[:, None] + offs[None, :] * s_d, mask=mask, other=0.0)
        x_e, x_o = tl.split(tl.reshape(x.to(tl.float32), [BLOCK_R, BLOCK_P, 2]))
    else:
        mask = mask_r[:, None] & (offs_p < P)[None, :]
        ptr_e = ptr + base[:, None] + (2 * offs_p)[None, :] * s_d
        x_e = tl.load(ptr_e, mask=mask, other=0.0).to(tl.float32)
        x_o = tl.load(ptr_e + s_d, mask=mask, other=0.0).to(tl.float32)
    return x_e, x_o


@triton.jit
def _store_pairs(ptr, rows, out_e, out_o, offs_p, mask_r, P, VEC: tl.constexpr,
                 BLOCK_P: tl.constexpr):  # fmt: skip
    """Store even/odd channel tiles into contiguous rows of ``2 * P``."""
    if VEC:
        offs = tl.arange(0, 2 * BLOCK_P)
        mask = mask_r[:, None] & (offs < 2 * P)[None, :]
        out = tl.interleave(out_e, out_o).to(ptr.dtype.element_ty)
        tl.store(ptr + rows[:, None] * (2 * P) + offs[None, :], out, mask=mask)
    else:
        mask = mask_r[:, None] & (offs_p < P)[None, :]
        o_ptr = ptr + rows[:, None] * (2 * P) + (2 * offs_p)[None, :]
        tl.store(o_ptr, out_e.to(ptr.dtype.element_ty), mask=mask)
        tl.store(o_ptr + 1, out_o.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def rmsnorm_rope_fwd_kernel(
    x_ptr, w_ptr, cos_ptr, sin_ptr, out_ptr, rstd_ptr,
    R, H, L, rows_per_prog, eps,
    sx_b, sx_l, sx_h, sx_d,
    sc_b, sc_l, sc_p, ss_b, ss_l, ss_p,
    P: tl.constexpr, X_ALIGN: tl.constexpr, DO_ALIGN: tl.constexpr, T_ALIGN: tl.constexpr,
    VEC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    offs_p = tl.arange(0, BLOCK_P)
    mask_p = offs_p < P
    w_e = tl.load(w_ptr + 2 * offs_p, mask=mask_p, other=0.0).to(tl.float32)[None, :]
    w_o = tl.load(w_ptr + 2 * offs_p + 1, mask=mask_p, other=0.0).to(tl.float32)[None, :]
    row_start = pid * rows_per_prog
    for r in range(0, rows_per_prog, BLOCK_R):
        local = r + tl.arange(0, BLOCK_R)
        rows = (row_start + local).to(tl.int64)
        mask_r = (rows < R) & (local < rows_per_prog)
        mask = mask_r[:, None] & mask_p[None, :]
        base, pos, bidx = _row_offsets(rows, H, L, sx_b, sx_l, sx_h, X_ALIGN)
        x_e, x_o = _load_pairs(x_ptr, base, offs_p, mask_r, P, sx_d, VEC, BLOCK_R, BLOCK_P)
        ms = (tl.sum(x_e * x_e, axis=1) + tl.sum(x_o * x_o, axis=1)) / (2 * P)
        rstd = 1.0 / tl.sqrt(ms + eps)
        a = x_e * rstd[:, None] * w_e
        b = x_o * rstd[:, None] * w_o
        cos = _load_table(cos_ptr, bidx, pos, sc_b, sc_l, sc_p, offs_p, mask, T_ALIGN)
        sin = _load_table(sin_ptr, bidx, pos, ss_b, ss_l, ss_p, offs_p, mask, T_ALIGN)
        out_e = a * cos - b * sin
        out_o = a * sin + b * cos
        _store_pairs(out_ptr, rows, out_e, out_o, offs_p, mask_r, P, VEC, BLOCK_P)
        tl.store(rstd_ptr + rows, rstd, mask=mask_r)


@triton.jit
def rmsnorm_rope_bwd_kernel(
    dout_ptr, x_ptr, w_ptr, cos_ptr, sin_ptr, rstd_ptr, dx_ptr, dw_ptr,
    R, H, L, rows_per_prog,
    sdo_b, sdo_l, sdo_h, sdo_d,
    sx_b, sx_l, sx_h, sx_d,
    sc_b, sc_l, sc_p, ss_b, ss_l, ss_p,
    P: tl.constexpr, X_ALIGN: tl.constexpr, DO_ALIGN: tl.constexpr, T_ALIGN: tl.constexpr,
    VEC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    offs_p = tl.arange(0, BLOCK_P)
    mask_p = offs_p < P
    w_e = tl.load(w_ptr + 2 * offs_p, mask=mask_p, other=0.0).to(tl.float32)[None, :]
    w_o = tl.load(w_ptr + 2 * offs_p + 1, mask=mask_p, other=0.0).to(tl.float32)[None, :]
    dw_e = tl.zeros([BLOCK_P], dtype=tl.float32)
    dw_o = tl.zeros([BLOCK_P], dtype=tl.float32)
    row_start = pid * rows_per_prog
    for r in range(0, rows_per_prog, BLOCK_R):
        local = r + tl.arange(0, BLOCK_R)
        rows = (row_start + local).to(tl.int64)
        mask_r = (rows < R) & (local < rows_per_prog)
        mask = mask_r[:, None] & mask_p[None, :]
        base, pos, bidx = _row_offsets(rows, H, L, sx_b, sx_l, sx_h, X_ALIGN)
        x_e, x_o = _load_pairs(x_ptr, base, offs_p, mask_r, P, sx_d, VEC, BLOCK_R, BLOCK_P)
        dbase, _, _ = _row_offsets(rows, H, L, sdo_b, sdo_l, sdo_h, DO_ALIGN)
        do_e, do_o = _load_pairs(dout_ptr, dbase, offs_p, mask_r, P, sdo_d, VEC, BLOCK_R, BLOCK_P)
        rstd = tl.load(rstd_ptr + rows, mask=mask_r, other=0.0)
        cos = _load_table(cos_ptr, bidx, pos, sc_b, sc_l, sc_p, offs_p, mask, T_ALIGN)
        sin = _load_table(sin_ptr, bidx, pos, ss_b, ss_l, ss_p, offs_p, mask, T_ALIGN)
        du_e = do_e * cos + do_o * sin
        du_o = do_o * cos - do_e * sin
        xn_e = x_e * rstd[:, None]
        xn_o = x_o * rstd[:, None]
        dw_e += tl.sum(du_e * xn_e, axis=0)
        dw_o += tl.sum(du_o * xn_o, axis=0)
        dxn_e = du_e * w_e
        dxn_o = du_o * w_o
        dot = (tl.sum(dxn_e * xn_e, axis=1) + tl.sum(dxn_o * xn_o, axis=1)) / (2 * P)
        dx_e = (dxn_e - xn_e * dot[:, None]) * rstd[:, None]
        dx_o = (dxn_o - xn_o * dot[:, None]) * rstd[:, None]
        _store_pairs(dx_ptr, rows, dx_e, dx_o, offs_p, mask_r, P, VEC, BLOCK_P)
    dw_base = dw_ptr + pid * (2 * P) + 2 * offs_p
    tl.store(dw_base, dw_e, mask=mask_p)
    tl.store(dw_base + 1, dw_o, mask=mask_p)
