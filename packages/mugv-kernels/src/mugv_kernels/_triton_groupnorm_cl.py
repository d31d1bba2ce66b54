"""Triton kernels of GroupNorm + SiLU for channels-last activations (kernel 4, NHWC / NDHWC).

Geometry: ``x [N, S, C]`` with channels contiguous (``S`` = product of the spatial dims), the
memory of a ``channels_last`` / ``channels_last_3d`` tensor. Apply-pass program
``(n * num_chunks + chunk, cb)`` handles the tile of ``BLOCK_S`` spatial positions x ``BLOCK_C``
channels; a statistics program handles ``tiles`` such tiles (one chunk); group ``g``
holds channels ``[g * cpg, (g + 1) * cpg)``, so a tile row covers several groups and the
per-group values (mean, rstd, m1, m2) are gathered per channel. Per-chunk partial sums are
written per channel as ``[N, C, num_chunks]``, the layout of the channels-first kernels, so
the group combine (``gn_combine_kernel``) and the host-side reductions are shared.
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
def gn_cl_stats_kernel(
    x_ptr, mean_ptr, m2_ptr, S, C, num_chunks, tiles,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Per-channel (mean, M2) of a chunk of ``tiles * BLOCK_S`` positions. Sums of the data
    shifted by the chunk's first row (per channel, for stability) accumulate element-wise over
    the tiles; the cross-thread reduction over positions runs once, at the end."""
    n, chunk, cols, col_mask, _m0, _o0, _n0 = _chunk_tile(
        S, C, num_chunks, tiles, 0, BLOCK_S, BLOCK_C
    )
    r_first = chunk * tiles * BLOCK_S
    shift = tl.load(x_ptr + n * S * C + r_first.to(tl.int64) * C + cols, mask=col_mask, other=0.0)
    shift = shift.to(tl.float32)[None, :]
    acc_s = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
    acc_q = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
    for t in range(0, tiles):
        _n1, _c1, _cols1, _cm1, mask, offs, _nt1 = _chunk_tile(
            S, C, num_chunks, tiles, t, BLOCK_S, BLOCK_C
        )
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, x - shift, 0.0)
        acc_s += d
        acc_q += d * d
    count = tl.minimum(S - r_first, tiles * BLOCK_S).to(tl.float32)
    mean_d = tl.sum(acc_s, axis=0) / count
    m2 = tl.maximum(tl.sum(acc_q, axis=0) - count * mean_d * mean_d, 0.0)
    dst = (n * C + cols) * num_chunks + chunk
    tl.store(mean_ptr + dst, tl.sum(shift, axis=0) + mean_d, mask=col_mask)
    tl.store(m2_ptr + dst, m2, mask=col_mask)


@triton.jit
def _channel_params(w_ptr, b_ptr, mean_ptr, rstd_ptr, n, cols, col_mask, C, cpg):
    ng = (n * C + cols) // cpg
    mean = tl.load(mean_ptr + ng, mask=col_mask, other=0.0)
    rstd = tl.load(rstd_ptr + ng, mask=col_mask, other=0.0)
    w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    return ng, mean[None, :], rstd[None, :], w[None, :], b[None, :]


@triton.jit
def gn_cl_apply_kernel(
    x_ptr, out_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, S, C, cpg, num_chunks,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    n, _, cols, col_mask, mask, offs = _tile(S, C, num_chunks, True, BLOCK_S, BLOCK_C)
    _, mean, rstd, w, b = _channel_params(
        w_ptr, b_ptr, mean_ptr, rstd_ptr, n, cols, col_mask, C, cpg
    )
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    z = (x - mean) * rstd * w + b
    y = z / (1.0 + tl.exp(-z))
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


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
