"""Triton kernels of the modulated LayerNorm and the gated-residual + modulated LayerNorm.

Imported only when triton is. Geometry (see :mod:`mugv_kernels._layout`): activations are
``[N, L, D]`` with arbitrary strides; program ``(pid_l, n)`` handles ``rows_per_prog`` tokens
of sample ``n`` in tiles of ``BLOCK_R x BLOCK_D``. A modulation tensor is addressed as
``ptr + n*s_n + l*s_l + branch*s_b + d*s_d`` with ``MODE`` 0 = per sample (``s_l = s_b = 0``),
1 = per token, 2 = per branch (the branch of token ``l`` read from the ``[N, L]`` mask).

Per-sample and per-branch gradients are written as fp32 partial sums per program
(``[N, P, D]`` resp. ``[N, P, 2, D]``, ``P`` programs along ``L``) and summed by the caller,
which keeps the result deterministic.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _load_mod_const(ptr, n, s_n, s_b, s_d, offs_d, mask_d, branch: tl.constexpr):
    """Per-sample (or one branch of a per-branch) modulation vector, fp32 ``[1, BLOCK_D]``."""
    vec = tl.load(ptr + n * s_n + branch * s_b + offs_d * s_d, mask=mask_d, other=0.0)
    return vec.to(tl.float32)[None, :]


@triton.jit
def _mod_tile(ptr, n, rows, s_n, s_l, s_d, offs_d, mask_2d, c0, c1, br, MODE: tl.constexpr):
    """The modulation of a tile of tokens, fp32 ``[BLOCK_R, BLOCK_D]`` (or broadcastable)."""
    if MODE == 0:
        out = c0
    elif MODE == 1:
        ptrs = ptr + n * s_n + rows[:, None] * s_l + offs_d[None, :] * s_d
        out = tl.load(ptrs, mask=mask_2d, other=0.0).to(tl.float32)
    else:
        out = tl.where(br[:, None], c1, c0)
    return out


@triton.jit
def _row_norm(v, mask_2d, D, eps):
    """LayerNorm statistics of each row of a fp32 tile: ``(v_hat, mean, rstd)``."""
    mean = tl.sum(v, axis=1) / D
    centered = tl.where(mask_2d, v - mean[:, None], 0.0)
    var = tl.sum(centered * centered, axis=1) / D
    rstd = 1.0 / tl.sqrt(var + eps)
    return centered * rstd[:, None], mean, rstd


@triton.jit
def modln_fwd_kernel(
    x_ptr, out_ptr, shift_ptr, scale_ptr, br_ptr, mean_ptr, rstd_ptr,
    L, D, rows_per_prog, eps,
    sx_n, sx_l, sx_d,
    so_n, so_l, so_d,
    ssh_n, ssh_l, ssh_b, ssh_d,
    ssc_n, ssc_l, ssc_b, ssc_d,
    sbr_n, sbr_l,
    MODE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid_l = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    sh0 = 0.0
    sh1 = 0.0
    sc0 = 0.0
    sc1 = 0.0
    if MODE != 1:
        sh0 = _load_mod_const(shift_ptr, n, ssh_n, ssh_b, ssh_d, offs_d, mask_d, 0)
        sc0 = _load_mod_const(scale_ptr, n, ssc_n, ssc_b, ssc_d, offs_d, mask_d, 0)
    if MODE == 2:
        sh1 = _load_mod_const(shift_ptr, n, ssh_n, ssh_b, ssh_d, offs_d, mask_d, 1)
        sc1 = _load_mod_const(scale_ptr, n, ssc_n, ssc_b, ssc_d, offs_d, mask_d, 1)
    row_start = pid_l * rows_per_prog
    for r in range(0, rows_per_prog, BLOCK_R):
        rows = (row_start + r + tl.arange(0, BLOCK_R)).to(tl.int64)
        mask_r = (rows < L) & (r + tl.arange(0, BLOCK_R) < rows_per_prog)
        mask_2d = mask_r[:, None] & mask_d[None, :]
        x_ptrs = x_ptr + n * sx_n + rows[:, None] * sx_l + offs_d[None, :] * sx_d
        x = tl.load(x_ptrs, mask=mask_2d, other=0.0).to(tl.float32)
        x_hat, mean, rstd = _row_norm(x, mask_2d, D, eps)
        br = 0
        if MODE == 2:
            br = tl.load(br_ptr + n * sbr_n + rows * sbr_l, mask=mask_r, other=0) != 0
        shift = _mod_tile(
            shift_ptr, n, rows, ssh_n, ssh_l, ssh_d, offs_d, mask_2d, sh0, sh1, br, MODE
        )
        scale = _mod_tile(
            scale_ptr, n, rows, ssc_n, ssc_l, ssc_d, offs_d, mask_2d, sc0, sc1, br, MODE
        )
        out = x_hat * (1.0 + scale) + shift
        o_ptrs = out_ptr + n * so_n + rows[:, None] * so_l + offs_d[None, :] * so_d
        tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask_2d)
        tl.store(mean_ptr + n * L + rows, mean, mask=mask_r)
        tl.store(rstd_ptr + n * L + rows, rstd, mask=mask_r)


@triton.jit
def _accumulate(acc0, acc1, val, br, MODE: tl.constexpr):
    """Add the column sums of ``val`` to the per-sample / per-branch accumulators."""
    if MODE == 0:
        acc0 += tl.sum(val, axis=0)
    elif MODE == 2:
        acc0 += tl.sum(tl.where(br[:, None], 0.0, val), axis=0)
        acc1 += tl.sum(tl.where(br[:, None], val, 0.0), axis=0)
    return acc0, acc1


@triton.jit
def _store_mod_grad(
    ptr, acc0, acc1, val, n, rows, pid_l, P, L, D, offs_d, mask_d, mask_2d, MODE: tl.constexpr
):
    """Write a modulation gradient: per token directly (MODE 1), else the partial sums."""
    if MODE == 1:
        out = val.to(ptr.dtype.element_ty)
        tl.store(ptr + (n * L + rows[:, None]) * D + offs_d[None, :], out, mask=mask_2d)
    elif MODE == 0:
        tl.store(ptr + (n * P + pid_l) * D + offs_d, acc0, mask=mask_d)
    else:
        base = ptr + (n * P + pid_l) * 2 * D + offs_d
        tl.store(base, acc0, mask=mask_d)
        tl.store(base + D, acc1, mask=mask_d)


@triton.jit
def modln_bwd_kernel(
    dout_ptr, x_ptr, scale_ptr, br_ptr, mean_ptr, rstd_ptr,
    dx_ptr, dshift_ptr, dscale_ptr,
    L, D, rows_per_prog, P,
    sdo_n, sdo_l, sdo_d,
    sx_n, sx_l, sx_d,
    sdx_n, sdx_l, sdx_d,
    ssc_n, ssc_l, ssc_b, ssc_d,
    sbr_n, sbr_l,
    MODE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid_l = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    sc0 = 0.0
    sc1 = 0.0
    if MODE != 1:
        sc0 = _load_mod_const(scale_ptr, n, ssc_n, ssc_b, ssc_d, offs_d, mask_d, 0)
    if MODE == 2:
        sc1 = _load_mod_const(scale_ptr, n, ssc_n, ssc_b, ssc_d, offs_d, mask_d, 1)
    dsh0 = tl.zeros([BLOCK_D], dtype=tl.float32)
    dsh1 = tl.zeros([BLOCK_D], dtype=tl.float32)
    dsc0 = tl.zeros([BLOCK_D], dtype=tl.float32)
    dsc1 = tl.zeros([BLOCK_D], dtype=tl.float32)
    row_start = pid_l * rows_per_prog
    for r in range(0, rows_per_prog, BLOCK_R):
        rows = (row_start + r + tl.arange(0, BLOCK_R)).to(tl.int64)
        mask_r = (rows < L) & (r + tl.arange(0, BLOCK_R) < rows_per_prog)
        mask_2d = mask_r[:, None] & mask_d[None, :]
        x_ptrs = x_ptr + n * sx_n + rows[:, None] * sx_l + offs_d[None, :] * sx_d
        x = tl.load(x_ptrs, mask=mask_2d, other=0.0).to(tl.float32)
        do_ptrs = dout_ptr + n * sdo_n + rows[:, None] * sdo_l + offs_d[None, :] * sdo_d
        dout = tl.load(do_ptrs, mask=mask_2d, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + n * L + rows, mask=mask_r, other=0.0)
        rstd = tl.load(rstd_ptr + n * L + rows, mask=mask_r, other=0.0)
        x_hat = tl.where(mask_2d, (x - mean[:, None]) * rstd[:, None], 0.0)
        br = 0
        if MODE == 2:
            br = tl.load(br_ptr + n * sbr_n + rows * sbr_l, mask=mask_r, other=0) != 0
        scale = _mod_tile(
            scale_ptr, n, rows, ssc_n, ssc_l, ssc_d, offs_d, mask_2d, sc0, sc1, br, MODE
        )
        g = dout * (1.0 + scale)
        c1 = tl.sum(g * x_hat, axis=1) / D
        c2 = tl.sum(g, axis=1) / D
        dx = (g - c2[:, None] - x_hat * c1[:, None]) * rstd[:, None]
        dx_ptrs = dx_ptr + n * sdx_n + rows[:, None] * sdx_l + offs_d[None, :] * sdx_d
        tl.store(dx_ptrs, dx.to(dx_ptr.dtype.element_ty), mask=mask_2d)
        dsc_tile = dout * x_hat
        if MODE == 1:
            _store_mod_grad(
                dshift_ptr, dsh0, dsh1, dout, n, rows, pid_l, P, L, D, offs_d, mask_d, mask_2d, MODE
            )
            _store_mod_grad(
                dscale_ptr,
                dsc0,
                dsc1,
                dsc_tile,
                n,
                rows,
                pid_l,
                P,
                L,
                D,
                offs_d,
                mask_d,
                mask_2d,
                MODE,
            )
        else:
            dsh0, dsh1 = _accumulate(dsh0, dsh1, dout, br, MODE)
            dsc0, dsc1 = _accumulate(dsc0, dsc1, dsc_tile, br, MODE)
    if MODE != 1:
        _store_mod_grad(
            dshift_ptr, dsh0, dsh1, dsh0, n, 0, pid_l, P, L, D, offs_d, mask_d, mask_d, MODE
        )
        _store_mod_grad(
            dscale_ptr, dsc0, dsc1, dsc0, n, 0, pid_l, P, L, D, offs_d, mask_d, mask_d, MODE
        )


@triton.jit
def gated_fwd_kernel(
    x_ptr, y_ptr, bias_ptr, gate_ptr, shift_ptr, scale_ptr, br_ptr,
    h_ptr, hn_ptr, mean_ptr, rstd_ptr,
    L, D, rows_per_prog, eps,
    sx_n, sx_l, sx_d,
    sy_n, sy_l, sy_d,
    sg_n, sg_l, sg_b, sg_d,
    ssh_n, ssh_l, ssh_b, ssh_d,
    ssc_n, ssc_l, ssc_b, ssc_d,
    sbr_n, sbr_l,
    MODE: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid_l = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    g0 = 0.0
    g1 = 0.0
    sh0 = 0.0
    sh1 = 0.0
    sc0 = 0.0
    sc1 = 0.0
    if MODE != 1:
        g0 = _load_mod_const(gate_ptr, n, sg_n, sg_b, sg_d, offs_d, mask_d, 0)
        sh0 = _load_mod_const(shift_ptr, n, ssh_n, ssh_b, ssh_d, offs_d, mask_d, 0)
        sc0 = _load_mod_const(scale_ptr, n, ssc_n, ssc_b, ssc_d, offs_d, mask_d, 0)
    if MODE == 2:
        g1 = _load_mod_const(gate_ptr, n, sg_n, sg_b, sg_d, offs_d, mask_d, 1)
        sh1 = _load_mod_const(shift_ptr, n, ssh_n, ssh_b, ssh_d, offs_d, mask_d, 1)
        sc1 = _load_mod_const(scale_ptr, n, ssc_n, ssc_b, ssc_d, offs_d, mask_d, 1)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
    row_start = pid_l * rows_per_prog
    for r in range(0, rows_per_prog, BLOCK_R):
        rows = (row_start + r + tl.arange(0, BLOCK_R)).to(tl.int64)
        mask_r = (rows < L) & (r + tl.arange(0, BLOCK_R) < rows_per_prog)
        mask_2d = mask_r[:, None] & mask_d[None, :]
        x_ptrs = x_ptr + n * sx_n + rows[:, None] * sx_l + offs_d[None, :] * sx_d
        x = tl.load(x_ptrs, mask=mask_2d, other=0.0).to(tl.float32)
        y_ptrs = y_ptr + n * sy_n + rows[:, None] * sy_l + offs_d[None, :] * sy_d
        y = tl.load(y_ptrs, mask=mask_2d, other=0.0).to(tl.float32)
        br = 0
        if MODE == 2:
            br = tl.load(br_ptr + n * sbr_n + rows * sbr_l, mask=mask_r, other=0) != 0
        gate = _mod_tile(gate_ptr, n, rows, sg_n, sg_l, sg_d, offs_d, mask_2d, g0, g1, br, MODE)
        h = (x + gate * (y + bias)).to(h_ptr.dtype.element_ty)
        out_offs = (n * L + rows[:, None]) * D + offs_d[None, :]
        tl.store(h_ptr + out_offs, h, mask=mask_2d)
        h_hat, mean, rstd = _row_norm(h.to(tl.float32), mask_2d, D, eps)
        shift = _mod_tile(
            shift_ptr, n, rows, ssh_n, ssh_l, ssh_d, offs_d, mask_2d, sh0, sh1, br, MODE
        )
        scale = _mod_tile(
            scale_ptr, n, rows, ssc_n, ssc_l, ssc_d, offs_d, mask_2d, sc0, sc1, br, MODE
        )
        hn = h_hat * (1.0 + scale) + shift
        tl.store(hn_ptr + out_offs, hn.to(hn_ptr.dtype.element_ty), mask=mask_2d)
        tl.store(mean_ptr + n * L + rows, mean, mask=mask_r)
        tl.store(rstd_ptr + n * L + rows, rstd, mask=mask_r)


@triton.jit
def gated_bwd_kernel(
    dh_ptr, dhn_ptr, h_ptr, y_ptr, bias_ptr, gate_ptr, scale_ptr, br_ptr, mean_ptr, rstd_ptr,
    dx_ptr, dy_ptr, dgate_ptr, dshift_ptr, dscale_ptr, dbias_ptr,
    L, D, rows_per_prog, P,
    sdh_n, sdh_l, sdh_d,
    sdn_n, sdn_l, sdn_d,
    sy_n, sy_l, sy_d,
    sg_n, sg_l, sg_b, sg_d,
    ssc_n, ssc_l, ssc_b, ssc_d,
    sbr_n, sbr_l,
    MODE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DH: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid_l = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    g0 = 0.0
    g1 = 0.0
    sc0 = 0.0
    sc1 = 0.0
    if MODE != 1:
        g0 = _load_mod_const(gate_ptr, n, sg_n, sg_b, sg_d, offs_d, mask_d, 0)
        sc0 = _load_mod_const(scale_ptr, n, ssc_n, ssc_b, ssc_d, offs_d, mask_d, 0)
    if MODE == 2:
        g1 = _load_mod_const(gate_ptr, n, sg_n, sg_b, sg_d, offs_d, mask_d, 1)
        sc1 = _load_mod_const(scale_ptr, n, ssc_n, ssc_b, ssc_d, offs_d, mask_d, 1)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
    dg0 = tl.zeros([BLOCK_D], dtype=tl.float32)
    dg1 = tl.zeros([BLOCK_D], dtype=tl.float32)
    dsh0 = tl.zeros([BLOCK_D], dtype=tl.float32)
    dsh1 = tl.zeros([BLOCK_D], dtype=tl.float32)
    dsc0 = tl.zeros([BLOCK_D], dtype=tl.float32)
    dsc1 = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias = tl.zeros([BLOCK_D], dtype=tl.float32)
    row_start = pid_l * rows_per_prog
    for r in range(0, rows_per_prog, BLOCK_R):
        rows = (row_start + r + tl.arange(0, BLOCK_R)).to(tl.int64)
        mask_r = (rows < L) & (r + tl.arange(0, BLOCK_R) < rows_per_prog)
        mask_2d = mask_r[:, None] & mask_d[None, :]
        out_offs = (n * L + rows[:, None]) * D + offs_d[None, :]
        h = tl.load(h_ptr + out_offs, mask=mask_2d, other=0.0).to(tl.float32)
        dn_ptrs = dhn_ptr + n * sdn_n + rows[:, None] * sdn_l + offs_d[None, :] * sdn_d
        dhn = tl.load(dn_ptrs, mask=mask_2d, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + n * L + rows, mask=mask_r, other=0.0)
        rstd = tl.load(rstd_ptr + n * L + rows, mask=mask_r, other=0.0)
        h_hat = tl.where(mask_2d, (h - mean[:, None]) * rstd[:, None], 0.0)
        br = 0
        if MODE == 2:
            br = tl.load(br_ptr + n * sbr_n + rows * sbr_l, mask=mask_r, other=0) != 0
        scale = _mod_tile(
            scale_ptr, n, rows, ssc_n, ssc_l, ssc_d, offs_d, mask_2d, sc0, sc1, br, MODE
        )
        gate = _mod_tile(gate_ptr, n, rows, sg_n, sg_l, sg_d, offs_d, mask_2d, g0, g1, br, MODE)
        g = dhn * (1.0 + scale)
        c1 = tl.sum(g * h_hat, axis=1) / D
        c2 = tl.sum(g, axis=1) / D
        dh = (g - c2[:, None] - h_hat * c1[:, None]) * rstd[:, None]
        if HAS_DH:
            dh_ptrs = dh_ptr + n * sdh_n + rows[:, None] * sdh_l + offs_d[None, :] * sdh_d
            dh += tl.load(dh_ptrs, mask=mask_2d, other=0.0).to(tl.float32)
        y_ptrs = y_ptr + n * sy_n + rows[:, None] * sy_l + offs_d[None, :] * sy_d
        yb = tl.load(y_ptrs, mask=mask_2d, other=0.0).to(tl.float32) + bias
        tl.store(dx_ptr + out_offs, dh.to(dx_ptr.dtype.element_ty), mask=mask_2d)
        dy = dh * gate
        tl.store(dy_ptr + out_offs, dy.to(dy_ptr.dtype.element_ty), mask=mask_2d)
        if HAS_BIAS:
            dbias += tl.sum(dy, axis=0)
        dg_tile = dh * yb
        dsc_tile = dhn * h_hat
        if MODE == 1:
            _store_mod_grad(
                dgate_ptr, dg0, dg1, dg_tile, n, rows, pid_l, P, L, D, offs_d, mask_d, mask_2d, MODE
            )
            _store_mod_grad(
                dshift_ptr, dsh0, dsh1, dhn, n, rows, pid_l, P, L, D, offs_d, mask_d, mask_2d, MODE
            )
            _store_mod_grad(
                dscale_ptr,
                dsc0,
                dsc1,
                dsc_tile,
                n,
                rows,
                pid_l,
                P,
                L,
                D,
                offs_d,
                mask_d,
                mask_2d,
                MODE,
            )
        else:
            dg0, dg1 = _accumulate(dg0, dg1, dg_tile, br, MODE)
            dsh0, dsh1 = _accumulate(dsh0, dsh1, dhn, br, MODE)
            dsc0, dsc1 = _accumulate(dsc0, dsc1, dsc_tile, br, MODE)
    if MODE != 1:
        _store_mod_grad(
            dgate_ptr, dg0, dg1, dg0, n, 0, pid_l, P, L, D, offs_d, mask_d, mask_d, MODE
        )
        _store_mod_grad(
            dshift_ptr, dsh0, dsh1, dsh0, n, 0, pid_l, P, L, D, offs_d, mask_d, mask_d, MODE
        )
        _store_mod_grad(
            dscale_ptr, dsc0, dsc1, dsc0, n, 0, pid_l, P, L, D, offs_d, mask_d, mask_d, MODE
        )
    if HAS_BIAS:
        tl.store(dbias_ptr + (n * P + pid_l) * D + offs_d, dbias, mask=mask_d)
