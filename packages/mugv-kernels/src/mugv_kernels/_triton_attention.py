"""Triton flash attention (forward + backward) for head dims that are not a power of two.

The head dim ``Dh`` (e.g. 72) is split into a power-of-two part ``D1`` (64) and a remainder
padded to ``D2`` (16, masked), so every product is two ``tl.dot`` calls on 64 + 16 columns
instead of one on 128 padded columns. Non-causal, no mask. Layout ``[B, L, H, Dh]`` with
arbitrary strides; softmax statistics in base 2. Program grid: ``(cdiv(L, BLOCK), B*H)``.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tile(ptr, rows, L, s_l, cols, ncols, s_d, TRANS: tl.constexpr):
    """Load ``[rows, cols]`` (or its transpose) of one head, zero outside ``L x ncols``."""
    if TRANS:
        mask = (cols[:, None] < ncols) & (rows[None, :] < L)
        tile = tl.load(ptr + rows[None, :] * s_l + cols[:, None] * s_d, mask=mask, other=0.0)
    else:
        mask = (rows[:, None] < L) & (cols[None, :] < ncols)
        tile = tl.load(ptr + rows[:, None] * s_l + cols[None, :] * s_d, mask=mask, other=0.0)
    return tile


@triton.jit
def _head(b, h, s_b, s_h, ALIGN: tl.constexpr):
    """Element offset of head ``(b, h)``; ``ALIGN`` divides it (checked by the host)."""
    if ALIGN > 1:  # written as a product with ALIGN so the compiler sees the divisibility
        off = (b * (s_b // ALIGN) + h * (s_h // ALIGN)) * ALIGN
    else:
        off = b * s_b + h * s_h
    return off


@triton.jit
def attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr,
    L, H, Dh: tl.constexpr, qk_scale,
    sq_b, sq_l, sq_h, sq_d,
    sk_b, sk_l, sk_h, sk_d,
    sv_b, sv_l, sv_h, sv_d,
    so_b, so_l, so_h, so_d,
    D1: tl.constexpr, D2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ALIGN: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    q_ptr += _head(b, h, sq_b, sq_h, ALIGN)
    k_ptr += _head(b, h, sk_b, sk_h, ALIGN)
    v_ptr += _head(b, h, sv_b, sv_h, ALIGN)
    o_ptr += _head(b, h, so_b, so_h, ALIGN)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    d1 = tl.arange(0, D1)
    d2 = D1 + tl.arange(0, D2)
    q1 = _tile(q_ptr, offs_m, L, sq_l, d1, Dh, sq_d, False)
    q2 = _tile(q_ptr, offs_m, L, sq_l, d2, Dh, sq_d, False)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_M, D1], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_M, D2], dtype=tl.float32)
    for start_n in range(0, L, BLOCK_N):
        offs_n = start_n + offs_n0
        k1 = _tile(k_ptr, offs_n, L, sk_l, d1, Dh, sk_d, True)
        k2 = _tile(k_ptr, offs_n, L, sk_l, d2, Dh, sk_d, True)
        s = tl.dot(q1, k1) + tl.dot(q2, k2)
        s = tl.where((offs_n < L)[None, :], s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v1 = _tile(v_ptr, offs_n, L, sv_l, d1, Dh, sv_d, False)
        v2 = _tile(v_ptr, offs_n, L, sv_l, d2, Dh, sv_d, False)
        p_lo = p.to(v1.dtype)
        acc1 = acc1 * alpha[:, None] + tl.dot(p_lo, v1)
        acc2 = acc2 * alpha[:, None] + tl.dot(p_lo, v2)
        m_i = m_new
    inv = 1.0 / l_i
    mask_m = offs_m < L
    o1 = (acc1 * inv[:, None]).to(o_ptr.dtype.element_ty)
    o2 = (acc2 * inv[:, None]).to(o_ptr.dtype.element_ty)
    tl.store(o_ptr + offs_m[:, None] * so_l + d1[None, :] * so_d, o1, mask=mask_m[:, None])
    tl.store(
        o_ptr + offs_m[:, None] * so_l + d2[None, :] * so_d,
        o2,
        mask=mask_m[:, None] & (d2 < Dh)[None, :],
    )
    tl.store(lse_ptr + bh.to(tl.int64) * L + offs_m, m_i + tl.math.log2(l_i), mask=mask_m)


@triton.jit
def attn_bwd_delta_kernel(
    o_ptr, do_ptr, delta_ptr, L, H, Dh: tl.constexpr,
    so_b, so_l, so_h, so_d, sdo_b, sdo_l, sdo_h, sdo_d,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    o = _tile(o_ptr + b * so_b + h * so_h, offs_m, L, so_l, d, Dh, so_d, False)
    do = _tile(do_ptr + b * sdo_b + h * sdo_h, offs_m, L, sdo_l, d, Dh, sdo_d, False)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(delta_ptr + bh.to(tl.int64) * L + offs_m, delta, mask=offs_m < L)


@triton.jit
def attn_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    L, H, Dh: tl.constexpr, qk_scale, sm_scale,
    sq_b, sq_l, sq_h, sq_d,
    sk_b, sk_l, sk_h, sk_d,
    sv_b, sv_l, sv_h, sv_d,
    sdo_b, sdo_l, sdo_h, sdo_d,
    D1: tl.constexpr, D2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ALIGN: tl.constexpr,
):  # fmt: skip
    """dK, dV for BLOCK_N keys; dK/dV written contiguous ``[B, L, H, Dh]``."""
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    q_ptr += _head(b, h, sq_b, sq_h, ALIGN)
    k_ptr += _head(b, h, sk_b, sk_h, ALIGN)
    v_ptr += _head(b, h, sv_b, sv_h, ALIGN)
    do_ptr += _head(b, h, sdo_b, sdo_h, ALIGN)
    lse_ptr += bh.to(tl.int64) * L
    delta_ptr += bh.to(tl.int64) * L
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    d1 = tl.arange(0, D1)
    d2 = D1 + tl.arange(0, D2)
    k1 = _tile(k_ptr, offs_n, L, sk_l, d1, Dh, sk_d, False)
    k2 = _tile(k_ptr, offs_n, L, sk_l, d2, Dh, sk_d, False)
    v1 = _tile(v_ptr, offs_n, L, sv_l, d1, Dh, sv_d, False)
    v2 = _tile(v_ptr, offs_n, L, sv_l, d2, Dh, sv_d, False)
    dk1 = tl.zeros([BLOCK_N, D1], dtype=tl.float32)
    dk2 = tl.zeros([BLOCK_N, D2], dtype=tl.float32)
    dv1 = tl.zeros([BLOCK_N, D1], dtype=tl.float32)
    dv2 = tl.zeros([BLOCK_N, D2], dtype=tl.float32)
    for start_m in range(0, L, BLOCK_M):
        offs_m = start_m + offs_m0
        mask_m = offs_m < L
        qT1 = _tile(q_ptr, offs_m, L, sq_l, d1, Dh, sq_d, True)
        qT2 = _tile(q_ptr, offs_m, L, sq_l, d2, Dh, sq_d, True)
        lse = tl.load(lse_ptr + offs_m, mask=mask_m, other=0.0)
        sT = (tl.dot(k1, qT1) + tl.dot(k2, qT2)) * qk_scale
        pT = tl.where(mask_m[None, :], tl.math.exp2(sT - lse[None, :]), 0.0)
        do1 = _tile(do_ptr, offs_m, L, sdo_l, d1, Dh, sdo_d, False)
        do2 = _tile(do_ptr, offs_m, L, sdo_l, d2, Dh, sdo_d, False)
        p_lo = pT.to(do1.dtype)
        dv1 += tl.dot(p_lo, do1)
        dv2 += tl.dot(p_lo, do2)
        delta = tl.load(delta_ptr + offs_m, mask=mask_m, other=0.0)
        dpT = tl.dot(v1, tl.trans(do1)) + tl.dot(v2, tl.trans(do2))
        dsT = (pT * (dpT - delta[None, :])).to(qT1.dtype)
        dk1 += tl.dot(dsT, tl.trans(qT1))
        dk2 += tl.dot(dsT, tl.trans(qT2))
    base = (b * L + offs_n[:, None]) * H * Dh + h * Dh
    mask_n = (offs_n < L)[:, None]
    tl.store(dk_ptr + base + d1[None, :], (dk1 * sm_scale).to(dk_ptr.dtype.element_ty), mask=mask_n)
    tl.store(dv_ptr + base + d1[None, :], dv1.to(dv_ptr.dtype.element_ty), mask=mask_n)
    mask2 = mask_n & (d2 < Dh)[None, :]
    tl.store(dk_ptr + base + d2[None, :], (dk2 * sm_scale).to(dk_ptr.dtype.element_ty), mask=mask2)
    tl.store(dv_ptr + base + d2[None, :], dv2.to(dv_ptr.dtype.element_ty), mask=mask2)


@triton.jit
def attn_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
    L, H, Dh: tl.constexpr, qk_scale, sm_scale,
    sq_b, sq_l, sq_h, sq_d,
    sk_b, sk_l, sk_h, sk_d,
    sv_b, sv_l, sv_h, sv_d,
    sdo_b, sdo_l, sdo_h, sdo_d,
    D1: tl.constexpr, D2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ALIGN: tl.constexpr,
):  # fmt: skip
    """dQ for BLOCK_M queries; written contiguous ``[B, L, H, Dh]``."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    q_ptr += _head(b, h, sq_b, sq_h, ALIGN)
    k_ptr += _head(b, h, sk_b, sk_h, ALIGN)
    v_ptr += _head(b, h, sv_b, sv_h, ALIGN)
    do_ptr += _head(b, h, sdo_b, sdo_h, ALIGN)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < L
    offs_n0 = tl.arange(0, BLOCK_N)
    d1 = tl.arange(0, D1)
    d2 = D1 + tl.arange(0, D2)
    q1 = _tile(q_ptr, offs_m, L, sq_l, d1, Dh, sq_d, False)
    q2 = _tile(q_ptr, offs_m, L, sq_l, d2, Dh, sq_d, False)
    do1 = _tile(do_ptr, offs_m, L, sdo_l, d1, Dh, sdo_d, False)
    do2 = _tile(do_ptr, offs_m, L, sdo_l, d2, Dh, sdo_d, False)
    lse = tl.load(lse_ptr + bh.to(tl.int64) * L + offs_m, mask=mask_m, other=0.0)
    delta = tl.load(delta_ptr + bh.to(tl.int64) * L + offs_m, mask=mask_m, other=0.0)
    dq1 = tl.zeros([BLOCK_M, D1], dtype=tl.float32)
    dq2 = tl.zeros([BLOCK_M, D2], dtype=tl.float32)
    for start_n in range(0, L, BLOCK_N):
        offs_n = start_n + offs_n0
        kT1 = _tile(k_ptr, offs_n, L, sk_l, d1, Dh, sk_d, True)
        kT2 = _tile(k_ptr, offs_n, L, sk_l, d2, Dh, sk_d, True)
        s = (tl.dot(q1, kT1) + tl.dot(q2, kT2)) * qk_scale
        p = tl.where((offs_n < L)[None, :], tl.math.exp2(s - lse[:, None]), 0.0)
        vT1 = _tile(v_ptr, offs_n, L, sv_l, d1, Dh, sv_d, True)
        vT2 = _tile(v_ptr, offs_n, L, sv_l, d2, Dh, sv_d, True)
        dp = tl.dot(do1, vT1) + tl.dot(do2, vT2)
        ds = (p * (dp - delta[:, None])).to(q1.dtype)
        dq1 += tl.dot(ds, tl.trans(kT1))
        dq2 += tl.dot(ds, tl.trans(kT2))
    base = (b * L + offs_m[:, None]) * H * Dh + h * Dh
    tl.store(
        dq_ptr + base + d1[None, :],
        (dq1 * sm_scale).to(dq_ptr.dtype.element_ty),
        mask=mask_m[:, None],
    )
    mask2 = mask_m[:, None] & (d2 < Dh)[None, :]
    tl.store(dq_ptr + base + d2[None, :], (dq2 * sm_scale).to(dq_ptr.dtype.element_ty), mask=mask2)
