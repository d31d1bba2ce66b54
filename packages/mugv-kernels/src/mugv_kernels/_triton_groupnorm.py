"""Triton kernels of GroupNorm + SiLU for channels-first activations (kernel 4).

Geometry: contiguous ``x [N, C, S]`` (``S`` = product of the spatial dims). Program
``(nc, chunk)`` handles ``BLOCK`` consecutive elements of channel row ``nc = n*C + c``. Group
statistics are combined by the caller from per-chunk ``(mean, M2)`` pairs (Chan's parallel
formula, stable for large means); the apply and backward passes read them per ``(n, group)``.
The apply pass walks the chunks in reverse order, so its first reads hit what the statistics
pass left in L2.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def gn_stats_kernel(x_ptr, mean_ptr, m2_ptr, S, num_chunks, BLOCK: tl.constexpr):
    chunk = tl.program_id(1)
    nc = tl.program_id(0).to(tl.int64)
    offs = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < S
    x = tl.load(x_ptr + nc * S + offs, mask=mask, other=0.0).to(tl.float32)
    count = tl.minimum(S - chunk * BLOCK, BLOCK).to(tl.float32)
    mean = tl.sum(x, axis=0) / count
    centered = tl.where(mask, x - mean, 0.0)
    tl.store(mean_ptr + nc * num_chunks + chunk, mean)
    tl.store(m2_ptr + nc * num_chunks + chunk, tl.sum(centered * centered, axis=0))


@triton.jit
def _silu_parts(x, mean, rstd, w, b):
    x_hat = (x - mean) * rstd
    z = x_hat * w + b
    sig = 1.0 / (1.0 + tl.exp(-z))
    return x_hat, z, sig


@triton.jit
def gn_apply_kernel(
    x_ptr, out_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, C, S, channels_per_group,
    BLOCK: tl.constexpr,
):  # fmt: skip
    chunk = tl.num_programs(1) - 1 - tl.program_id(1)
    nc = (tl.num_programs(0) - 1 - tl.program_id(0)).to(tl.int64)
    c = nc % C
    ng = nc // channels_per_group
    offs = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < S
    x = tl.load(x_ptr + nc * S + offs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.load(mean_ptr + ng)
    rstd = tl.load(rstd_ptr + ng)
    w = tl.load(w_ptr + c).to(tl.float32)
    b = tl.load(b_ptr + c).to(tl.float32)
    _, z, sig = _silu_parts(x, mean, rstd, w, b)
    tl.store(out_ptr + nc * S + offs, (z * sig).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gn_bwd_reduce_kernel(
    dout_ptr, x_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, sum_dz_ptr, sum_dz_xhat_ptr,
    C, S, channels_per_group, num_chunks, BLOCK: tl.constexpr,
):  # fmt: skip
    chunk = tl.program_id(1)
    nc = tl.program_id(0).to(tl.int64)
    c = nc % C
    ng = nc // channels_per_group
    offs = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < S
    x = tl.load(x_ptr + nc * S + offs, mask=mask, other=0.0).to(tl.float32)
    dout = tl.load(dout_ptr + nc * S + offs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.load(mean_ptr + ng)
    rstd = tl.load(rstd_ptr + ng)
    w = tl.load(w_ptr + c).to(tl.float32)
    b = tl.load(b_ptr + c).to(tl.float32)
    x_hat, z, sig = _silu_parts(x, mean, rstd, w, b)
    dz = tl.where(mask, dout * sig * (1.0 + z * (1.0 - sig)), 0.0)
    tl.store(sum_dz_ptr + nc * num_chunks + chunk, tl.sum(dz, axis=0))
    tl.store(sum_dz_xhat_ptr + nc * num_chunks + chunk, tl.sum(dz * x_hat, axis=0))


@triton.jit
def gn_bwd_dx_kernel(
    dout_ptr, x_ptr, dx_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, m1_ptr, m2_ptr,
    C, S, channels_per_group, BLOCK: tl.constexpr,
):  # fmt: skip
    chunk = tl.num_programs(1) - 1 - tl.program_id(1)
    nc = (tl.num_programs(0) - 1 - tl.program_id(0)).to(tl.int64)
    c = nc % C
    ng = nc // channels_per_group
    offs = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < S
    x = tl.load(x_ptr + nc * S + offs, mask=mask, other=0.0).to(tl.float32)
    dout = tl.load(dout_ptr + nc * S + offs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.load(mean_ptr + ng)
    rstd = tl.load(rstd_ptr + ng)
    w = tl.load(w_ptr + c).to(tl.float32)
    b = tl.load(b_ptr + c).to(tl.float32)
    x_hat, z, sig = _silu_parts(x, mean, rstd, w, b)
    dz = dout * sig * (1.0 + z * (1.0 - sig))
    m1 = tl.load(m1_ptr + ng)
    m2 = tl.load(m2_ptr + ng)
    dx = (dz * w - m1 - x_hat * m2) * rstd
    tl.store(dx_ptr + nc * S + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gn_combine_kernel(
    mean_c_ptr, m2_c_ptr, mean_ptr, rstd_ptr, S, num_chunks, per_group, eps,
    BLOCK: tl.constexpr, CHUNK_BLOCK: tl.constexpr,
):  # fmt: skip
    """Group mean/rstd from the ``per_group = channels_per_group * num_chunks`` chunk partials
    of group ``ng`` (Chan's formula: ``M2 = sum M2_j + sum n_j (mean_j - mean)^2``)."""
    ng = tl.program_id(0).to(tl.int64)
    total = (per_group // num_chunks).to(tl.float32) * S
    acc = tl.zeros([CHUNK_BLOCK], dtype=tl.float32)
    for start in range(0, per_group, CHUNK_BLOCK):
        j = start + tl.arange(0, CHUNK_BLOCK)
        mask = j < per_group
        cnt = tl.minimum(S - (j % num_chunks) * BLOCK, BLOCK).to(tl.float32)
        m = tl.load(mean_c_ptr + ng * per_group + j, mask=mask, other=0.0)
        acc += tl.where(mask, cnt * m, 0.0)
    mean = tl.sum(acc, axis=0) / total
    acc2 = tl.zeros([CHUNK_BLOCK], dtype=tl.float32)
    for start in range(0, per_group, CHUNK_BLOCK):
        j = start + tl.arange(0, CHUNK_BLOCK)
        mask = j < per_group
        cnt = tl.minimum(S - (j % num_chunks) * BLOCK, BLOCK).to(tl.float32)
        m = tl.load(mean_c_ptr + ng * per_group + j, mask=mask, other=0.0)
        m2 = tl.load(m2_c_ptr + ng * per_group + j, mask=mask, other=0.0)
        acc2 += tl.where(mask, m2 + cnt * (m - mean) * (m - mean), 0.0)
    var = tl.sum(acc2, axis=0) / total
    tl.store(mean_ptr + ng, mean)
    tl.store(rstd_ptr + ng, 1.0 / tl.sqrt(var + eps))
