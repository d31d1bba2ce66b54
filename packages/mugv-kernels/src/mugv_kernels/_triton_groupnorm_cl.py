"""Triton kernels of GroupNorm + SiLU for channels-last activations (kernel 4, NHWC / NDHWC).

Geometry: ``x [N, S, C]`` with channels contiguous (``S`` = product of the spatial dims), the
memory of a ``channels_last`` / ``channels_last_3d`` tensor; group ``g`` holds channels
``[g * cpg, (g + 1) * cpg)``.

Forward (inference and training): ``gn_cl_group_stats_kernel`` reduces a run of position
tiles per program to per-group (mean, M2, count) partials ``[N, P, G]`` (Chan merge, stores
contiguous), a small torch combine turns them into per-channel scale/shift (``in_bias``, the
bias of the producing convolution, folded in), and ``gn_cl_scale_shift_silu_kernel`` applies
``silu(x * a + b)`` in one pass. ``bias_residual_kernel``: ``x + bias + residual``.

Backward: program ``(n * num_chunks + chunk, cb)`` handles the tile of ``BLOCK_S`` positions
x ``BLOCK_C`` channels (the reduce programs ``tiles`` such tiles); a tile row covers several
groups, so per-group values (mean, rstd, m1, m2) are gathered per channel. Per-chunk partial
sums are written per channel as ``[N, C, num_chunks]``, the layout of the channels-first
kernels, so the host-side reductions are shared.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tile(S, C, num_chunks, reverse: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    cb = tl.program_id(1)
    if reverse:  # the apply passes walk backwards: first reads hit what the stats left in L2
        pid = tl.num_programs(0) - 1 - pid
        cb = tl.num_programs(1) - 1 - cb
    n = (pid // num_chunks).to(tl.int64)
    chunk = pid % num_chunks
    rows = chunk * BLOCK_S + tl.arange(0, BLOCK_S)
    cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < C
    mask = (rows < S)[:, None] & col_mask[None, :]
    offs = n * S * C + rows[:, None].to(tl.int64) * C + cols[None, :]
    return n, chunk, cols, col_mask, mask, offs


@triton.jit
def _chunk_tile(S, C, num_chunks, tiles, t, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """Tile ``t`` of the ``tiles`` consecutive position tiles of a statistics program's chunk."""
    pid = tl.program_id(0)
    n = (pid // num_chunks).to(tl.int64)
    chunk = pid % num_chunks
    r0 = (chunk * tiles + t) * BLOCK_S
    rows = r0 + tl.arange(0, BLOCK_S)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < C
    mask = (rows < S)[:, None] & col_mask[None, :]
    offs = n * S * C + rows[:, None].to(tl.int64) * C + cols[None, :]
    n_t = tl.minimum(tl.maximum(S - r0, 0), BLOCK_S).to(tl.float32)
    return n, chunk, cols, col_mask, mask, offs, n_t


@triton.jit
def _channel_params(w_ptr, b_ptr, mean_ptr, rstd_ptr, n, cols, col_mask, C, cpg):
    ng = (n * C + cols) // cpg
    mean = tl.load(mean_ptr + ng, mask=col_mask, other=0.0)
    rstd = tl.load(rstd_ptr + ng, mask=col_mask, other=0.0)
    w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    return ng, mean[None, :], rstd[None, :], w[None, :], b[None, :]


@triton.jit
def gn_cl_group_stats_kernel(
    x_ptr, bias_ptr, mean_ptr, m2_ptr, cnt_ptr, S, P,
    HAS_BIAS: tl.constexpr, C: tl.constexpr, G: tl.constexpr, CPG: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_CPG: tl.constexpr, BLOCK_S: tl.constexpr, TILES: tl.constexpr,
):  # fmt: skip
    """Forward statistics: program ``(n, p)`` reduces the ``TILES`` position tiles
    ``[p * TILES, (p + 1) * TILES)`` of sample ``n`` (a ``[BLOCK_S, G, CPG]`` view of each
    tile, ``x + bias`` when ``HAS_BIAS``) to per-group (mean, M2, count), merging the tiles
    with Chan's formula, and stores them contiguously at ``[n, p, :]`` of ``[N, P, G]``."""
    n = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1)
    rows = tl.arange(0, BLOCK_S)
    grp = tl.arange(0, BLOCK_G)
    k = tl.arange(0, BLOCK_CPG)
    chan = grp[:, None] * CPG + k[None, :]  # [BLOCK_G, BLOCK_CPG]
    chan_mask = (grp < G)[:, None] & (k < CPG)[None, :]
    if HAS_BIAS:
        cb = tl.load(bias_ptr + chan, mask=chan_mask, other=0.0).to(tl.float32)
    run_n = 0.0
    run_mean = tl.zeros([BLOCK_G], dtype=tl.float32)
    run_m2 = tl.zeros([BLOCK_G], dtype=tl.float32)
    for t in range(TILES):
        s0 = (p * TILES + t) * BLOCK_S
        valid = (s0 + rows) < S
        offs = (n * S + s0 + rows[:, None, None]).to(tl.int64) * C + chan[None, :, :]
        if (BLOCK_G != G) or (BLOCK_CPG != CPG):  # padded lanes (non-power-of-two G, CPG)
            mask = valid[:, None, None] & chan_mask[None, :, :]
        else:  # row-only mask: vectorised loads
            mask = valid[:, None, None]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            x = x + cb[None, :, :]
        nrows = tl.minimum(tl.maximum(S - s0, 0), BLOCK_S)
        cnt = (nrows * CPG).to(tl.float32)
        safe = tl.maximum(cnt, 1.0)
        t_sum = tl.sum(tl.sum(tl.where(mask, x, 0.0), axis=2), axis=0)
        t_mean = t_sum / safe
        d = tl.where(mask, x - t_mean[None, :, None], 0.0)
        t_m2 = tl.sum(tl.sum(d * d, axis=2), axis=0)
        tot = run_n + cnt
        w = cnt / tl.maximum(tot, 1.0)
        delta = t_mean - run_mean
        run_mean = run_mean + delta * w
        run_m2 = run_m2 + t_m2 + delta * delta * run_n * w
        run_n = tot
    dst = (n * P + p) * G + grp
    tl.store(mean_ptr + dst, run_mean, mask=grp < G)
    tl.store(m2_ptr + dst, run_m2, mask=grp < G)
    tl.store(cnt_ptr + n * P + p, run_n)


@triton.jit
def gn_cl_scale_shift_silu_kernel(
    x_ptr, out_ptr, a_ptr, b_ptr, S,
    C: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """Forward apply: ``out = silu(x * a[n, c] + b[n, c])`` over a ``[BLOCK_S, C]`` tile
    (``a``, ``b`` fp32 ``[N, C]``: the group statistics, affine and folded input bias)."""
    n = tl.program_id(0).to(tl.int64)
    s0 = tl.program_id(1) * BLOCK_S
    rows = s0 + tl.arange(0, BLOCK_S)
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < C
    if BLOCK_C == C:  # no padded lanes: row-only mask (vectorised loads)
        mask = (rows < S)[:, None]
    else:
        mask = (rows < S)[:, None] & col_mask[None, :]
    offs = (n * S + rows[:, None]).to(tl.int64) * C + cols[None, :]
    a = tl.load(a_ptr + n * C + cols, mask=col_mask, other=0.0)[None, :]
    b = tl.load(b_ptr + n * C + cols, mask=col_mask, other=0.0)[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    z = x * a + b
    y = z / (1.0 + tl.exp(-z))
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def bias_residual_kernel(
    x_ptr, bias_ptr, r_ptr, out_ptr, M,
    C: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """``out = x + bias[c] + r`` over ``[BLOCK_M, C]`` rows of ``[M, C]`` matrices (fp32
    sum, one rounding); each program reads its tile before writing it (``out`` may be ``x``)."""
    m0 = tl.program_id(0).to(tl.int64) * BLOCK_M
    rows = m0 + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < C
    if BLOCK_C == C:  # no padded lanes: row-only mask (vectorised loads)
        mask = (rows < M)[:, None]
    else:
        mask = (rows < M)[:, None] & col_mask[None, :]
    offs = rows[:, None] * C + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + offs, (x + b + r).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gn_cl_bwd_reduce_kernel(
    dout_ptr, x_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, sum_dz_ptr, sum_dz_xhat_ptr,
    S, C, cpg, num_chunks, tiles, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Per-channel partial sums of ``dz`` and ``dz * x_hat`` over a chunk of ``tiles`` tiles."""
    n, chunk, cols, col_mask, _m0, _o0, _n0 = _chunk_tile(
        S, C, num_chunks, tiles, 0, BLOCK_S, BLOCK_C
    )
    _, mean, rstd, w, b = _channel_params(
        w_ptr, b_ptr, mean_ptr, rstd_ptr, n, cols, col_mask, C, cpg
    )
    acc_a = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)  # reduced once, after the loop
    acc_b = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
    for t in range(0, tiles):
        _n1, _c1, _cols1, _cm1, mask, offs, _nt1 = _chunk_tile(
            S, C, num_chunks, tiles, t, BLOCK_S, BLOCK_C
        )
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dout = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x_hat = (x - mean) * rstd
        z = x_hat * w + b
        sig = 1.0 / (1.0 + tl.exp(-z))
        dz = tl.where(mask, dout * sig * (1.0 + z * (1.0 - sig)), 0.0)
        acc_a += dz
        acc_b += dz * x_hat
    dst = (n * C + cols) * num_chunks + chunk
    tl.store(sum_dz_ptr + dst, tl.sum(acc_a, axis=0), mask=col_mask)
    tl.store(sum_dz_xhat_ptr + dst, tl.sum(acc_b, axis=0), mask=col_mask)


@triton.jit
def gn_cl_bwd_dx_kernel(
    dout_ptr, x_ptr, dx_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, m1_ptr, m2_ptr,
    S, C, cpg, num_chunks, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    n, _, cols, col_mask, mask, offs = _tile(S, C, num_chunks, True, BLOCK_S, BLOCK_C)
    ng, mean, rstd, w, b = _channel_params(
        w_ptr, b_ptr, mean_ptr, rstd_ptr, n, cols, col_mask, C, cpg
    )
    m1 = tl.load(m1_ptr + ng, mask=col_mask, other=0.0)[None, :]
    m2 = tl.load(m2_ptr + ng, mask=col_mask, other=0.0)[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dout = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    x_hat = (x - mean) * rstd
    z = x_hat * w + b
    sig = 1.0 / (1.0 + tl.exp(-z))
    dz = dout * sig * (1.0 + z * (1.0 - sig))
    dx = (dz * w - m1 - x_hat * m2) * rstd
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
