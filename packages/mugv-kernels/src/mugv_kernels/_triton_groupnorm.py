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
    total = ((per_group // num_chunks) * 1.0) * S
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


# ------------------------------------------------------------------ one program per group
# Used when there are enough (n, group) pairs to fill the GPU. Statistics (sums shifted by
# the group's first element, for stability) and the apply pass run in one program; the second
# pass walks the group backwards so that its first reads hit what the first pass left in L2.


@triton.jit
def gn_group_fwd_kernel(
    x_ptr, out_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, C, S, channels_per_group, eps,
    BLOCK: tl.constexpr,
):  # fmt: skip
    ng = tl.program_id(0).to(tl.int64)
    base = ng * channels_per_group * S
    offs = tl.arange(0, BLOCK)
    shift = tl.load(x_ptr + base).to(tl.float32)
    acc_s = tl.zeros([BLOCK], dtype=tl.float32)
    acc_q = tl.zeros([BLOCK], dtype=tl.float32)
    for cl in range(0, channels_per_group):
        for start in range(0, S, BLOCK):
            mask = start + offs < S
            x = tl.load(x_ptr + base + cl * S + start + offs, mask=mask, other=0.0)
            d = tl.where(mask, x.to(tl.float32) - shift, 0.0)
            acc_s += d
            acc_q += d * d
    count = (channels_per_group * 1.0) * S
    mean_d = tl.sum(acc_s, axis=0) / count
    var = tl.maximum(tl.sum(acc_q, axis=0) / count - mean_d * mean_d, 0.0)
    mean = shift + mean_d
    rstd = 1.0 / tl.sqrt(var + eps)
    tl.store(mean_ptr + ng, mean)
    tl.store(rstd_ptr + ng, rstd)
    num_chunks = tl.cdiv(S, BLOCK)
    for ci in range(0, channels_per_group):
        cl = channels_per_group - 1 - ci
        c = (ng * channels_per_group + cl) % C
        w = tl.load(w_ptr + c).to(tl.float32)
        b = tl.load(b_ptr + c).to(tl.float32)
        for k in range(0, num_chunks):
            start = (num_chunks - 1 - k) * BLOCK
            mask = start + offs < S
            ptrs = base + cl * S + start + offs
            x = tl.load(x_ptr + ptrs, mask=mask, other=0.0).to(tl.float32)
            _, z, sig = _silu_parts(x, mean, rstd, w, b)
            tl.store(out_ptr + ptrs, (z * sig).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gn_group_bwd_kernel(
    dout_ptr, x_ptr, dx_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, sum_dz_ptr, sum_dz_xhat_ptr,
    C, S, channels_per_group, BLOCK: tl.constexpr,
):  # fmt: skip
    """Per group: per-channel sums of dz and dz*x_hat (written per channel row, for the weight
    and bias gradients), then dx; the second pass walks backwards as in the forward."""
    ng = tl.program_id(0).to(tl.int64)
    base = ng * channels_per_group * S
    offs = tl.arange(0, BLOCK)
    mean = tl.load(mean_ptr + ng)
    rstd = tl.load(rstd_ptr + ng)
    m1_acc = tl.zeros([BLOCK], dtype=tl.float32)
    m2_acc = tl.zeros([BLOCK], dtype=tl.float32)
    for cl in range(0, channels_per_group):
        c = (ng * channels_per_group + cl) % C
        w = tl.load(w_ptr + c).to(tl.float32)
        b = tl.load(b_ptr + c).to(tl.float32)
        acc_a = tl.zeros([BLOCK], dtype=tl.float32)
        acc_b = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, S, BLOCK):
            mask = start + offs < S
            ptrs = base + cl * S + start + offs
            x = tl.load(x_ptr + ptrs, mask=mask, other=0.0).to(tl.float32)
            dout = tl.load(dout_ptr + ptrs, mask=mask, other=0.0).to(tl.float32)
            x_hat, z, sig = _silu_parts(x, mean, rstd, w, b)
            dz = tl.where(mask, dout * sig * (1.0 + z * (1.0 - sig)), 0.0)
            acc_a += dz
            acc_b += dz * x_hat
        tl.store(sum_dz_ptr + ng * channels_per_group + cl, tl.sum(acc_a, axis=0))
        tl.store(sum_dz_xhat_ptr + ng * channels_per_group + cl, tl.sum(acc_b, axis=0))
        m1_acc += w * acc_a
        m2_acc += w * acc_b
    count = (channels_per_group * 1.0) * S
    m1 = tl.sum(m1_acc, axis=0) / count
    m2 = tl.sum(m2_acc, axis=0) / count
    num_chunks = tl.cdiv(S, BLOCK)
    for ci in range(0, channels_per_group):
        cl = channels_per_group - 1 - ci
        c = (ng * channels_per_group + cl) % C
        w = tl.load(w_ptr + c).to(tl.float32)
        b = tl.load(b_ptr + c).to(tl.float32)
        for k in range(0, num_chunks):
            start = (num_chunks - 1 - k) * BLOCK
            mask = start + offs < S
            ptrs = base + cl * S + start + offs
            x = tl.load(x_ptr + ptrs, mask=mask, other=0.0).to(tl.float32)
            dout = tl.load(dout_ptr + ptrs, mask=mask, other=0.0).to(tl.float32)
            x_hat, z, sig = _silu_parts(x, mean, rstd, w, b)
            dz = dout * sig * (1.0 + z * (1.0 - sig))
            dx = (dz * w - m1 - x_hat * m2) * rstd
            tl.store(dx_ptr + ptrs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gn_bwd_group_sums_kernel(
    sum_dz_ptr, sum_dzx_ptr, w_ptr, a_ptr, b_ptr, m1_ptr, m2_ptr, C, cpg, num_chunks, count,
    CPG_BLOCK: tl.constexpr, CHUNK_BLOCK: tl.constexpr,
):  # fmt: skip
    """Per group ``ng``: per-channel totals ``a = sum dz``, ``b = sum dz * x_hat`` of the chunk
    partials ``[N*C, num_chunks]`` (written to ``a``, ``b`` ``[N*C]`` for the weight and bias
    gradients) and ``m1 = sum_c w_c a_c / count``, ``m2 = sum_c w_c b_c / count`` of dx."""
    ng = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, CPG_BLOCK)
    mask_r = rows < cpg
    nc = ng * cpg + rows
    acc_a = tl.zeros([CPG_BLOCK, CHUNK_BLOCK], dtype=tl.float32)
    acc_b = tl.zeros([CPG_BLOCK, CHUNK_BLOCK], dtype=tl.float32)
    for start in range(0, num_chunks, CHUNK_BLOCK):
        j = start + tl.arange(0, CHUNK_BLOCK)
        mask = mask_r[:, None] & (j < num_chunks)[None, :]
        offs = nc[:, None] * num_chunks + j[None, :]
        acc_a += tl.load(sum_dz_ptr + offs, mask=mask, other=0.0)
        acc_b += tl.load(sum_dzx_ptr + offs, mask=mask, other=0.0)
    a = tl.sum(acc_a, axis=1)
    b = tl.sum(acc_b, axis=1)
    tl.store(a_ptr + nc, a, mask=mask_r)
    tl.store(b_ptr + nc, b, mask=mask_r)
    w = tl.load(w_ptr + nc % C, mask=mask_r, other=0.0).to(tl.float32)
    tl.store(m1_ptr + ng, tl.sum(w * a, axis=0) / count)
    tl.store(m2_ptr + ng, tl.sum(w * b, axis=0) / count)
