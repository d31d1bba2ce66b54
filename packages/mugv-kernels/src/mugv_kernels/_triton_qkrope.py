"""Triton kernels of the per-head RMSNorm + interleaved 3D RoPE (kernel 3), q and k together.

Geometry: ``q [B, L, HQ, DH]`` and ``k [B, L, HK, DH]`` (any strides) are seen as ``NT = B*L``
tokens. Program ``pid`` handles ``tokens_per_prog`` consecutive tokens in blocks of ``BT``;
for each token block it loads the cos/sin rows once and runs every head of q, then of k, in
``(token, head, channel)`` tiles of ``[BT, BH, D]``. The head dim is cut into two power-of-two
parts, ``D1`` (largest power of two <= DH) and ``D2`` (the rest, padded; 0 when DH is a power of
two), e.g. 72 = 64 + 8, so no lane of a tile is padding at DH=72 (or, with ``D2 = 0`` and
``D1V = DH < D1``, one padded part). A part is loaded as whole contiguous rows (wide loads);
the rotary pairs ``(2i, 2i+1)`` are split by reshaping the channel axis to ``[D/2, 2]`` (the
pair lies in one thread's registers: no shuffle); all arithmetic, the per-head sums included,
runs on the ``[BT, BH, D/2]`` pair halves, whose layout both parts share; the results are
joined and stored the same way. RMS statistics are recomputed in the backward (nothing saved
but the inputs); the backward writes one fp32 partial weight gradient per program and tensor,
``[num_programs, 2, DH]``.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _token_base(b, pos, s_b, s_l, ALIGN: tl.constexpr):
    """Element offset of each token's first head; ``ALIGN`` divides every offset (checked by
    the host; written as a product so that the compiler sees it and emits wide loads)."""
    if ALIGN > 1:
        return (b * (s_b // ALIGN) + pos * (s_l // ALIGN)) * ALIGN
    return b * s_b + pos * s_l


@triton.jit
def _part(base_T, mask_T, h0, s_h, s_d, H: tl.constexpr, BH: tl.constexpr,
          D_OFF: tl.constexpr, DB: tl.constexpr, DV: tl.constexpr, ALIGN: tl.constexpr):  # fmt: skip
    """Offsets and mask of the ``[BT, BH, DB]`` tile of heads ``h0..h0+BH`` and channels
    ``D_OFF..D_OFF+DB`` (``DV`` of them valid)."""
    h = h0 + tl.arange(0, BH)
    d = D_OFF + tl.arange(0, DB)
    if ALIGN > 1:
        head = (h * (s_h // ALIGN)) * ALIGN
    else:
        head = h * s_h
    offs = base_T[:, None, None] + head[None, :, None] + (d * s_d)[None, None, :]
    mask = mask_T[:, None, None]
    if H % BH != 0:
        mask = mask & (h < H)[None, :, None]
    if DV < DB:
        mask = mask & (d < D_OFF + DV)[None, None, :]
    return offs, mask


@triton.jit
def _table(ptr, b, pos, s_b, s_l, s_p, mask_T, P: tl.constexpr, P_OFF: tl.constexpr,
           PB: tl.constexpr, ALIGN: tl.constexpr):  # fmt: skip
    """cos or sin columns ``P_OFF..P_OFF+PB`` of each token, fp32 ``[BT, 1, PB]``."""
    p = P_OFF + tl.arange(0, PB)
    row = _token_base(b, pos, s_b, s_l, ALIGN)
    mask = mask_T[:, None] & (p < P)[None, :]
    vals = tl.load(ptr + row[:, None] + (p * s_p)[None, :], mask=mask, other=0.0)
    return vals.to(tl.float32)[:, None, :]


@triton.jit
def _pairs(x, BT: tl.constexpr, BH: tl.constexpr, DB: tl.constexpr):
    """Even and odd channels of ``x [BT, BH, DB]``, each ``[BT, BH, DB/2]`` (a pair lies in
    one thread's registers, so this is free)."""
    return tl.split(tl.reshape(x, [BT, BH, DB // 2, 2]))


@triton.jit
def _interleave(x_e, x_o, BT: tl.constexpr, BH: tl.constexpr, DB: tl.constexpr):
    return tl.reshape(tl.join(x_e, x_o), [BT, BH, DB])


@triton.jit
def _weight_pairs(w_ptr, D_OFF: tl.constexpr, DB: tl.constexpr, DV: tl.constexpr):
    """Even and odd weights of channels ``D_OFF..D_OFF+DB``, fp32 ``[1, 1, DB/2]`` each."""
    d = D_OFF + 2 * tl.arange(0, DB // 2)
    mask = d < D_OFF + DV
    w_e = tl.load(w_ptr + d, mask=mask, other=0.0).to(tl.float32)[None, None, :]
    w_o = tl.load(w_ptr + d + 1, mask=mask, other=0.0).to(tl.float32)[None, None, :]
    return w_e, w_o


@triton.jit
def _load_part(x_ptr, base, mask_T, h0, s_h, s_d, H: tl.constexpr, BH: tl.constexpr,
               D_OFF: tl.constexpr, DB: tl.constexpr, DV: tl.constexpr, ALIGN: tl.constexpr,
               BT: tl.constexpr):  # fmt: skip
    """Pairs of one part, fp32: ``(x_e, x_o)`` each ``[BT, BH, DB/2]``, and the row mask."""
    offs, mask = _part(base, mask_T, h0, s_h, s_d, H, BH, D_OFF, DB, DV, ALIGN)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    x_e, x_o = _pairs(x, BT, BH, DB)
    return x_e, x_o


@triton.jit
def _store_part(ptr, out_base, mask_T, h0, v_e, v_o, H: tl.constexpr, BH: tl.constexpr,
                DH: tl.constexpr, D_OFF: tl.constexpr, DB: tl.constexpr, DV: tl.constexpr,
                BT: tl.constexpr):  # fmt: skip
    """Store pairs into contiguous ``[.., H, DH]`` rows starting at ``out_base``."""
    offs, mask = _part(out_base, mask_T, h0, DH, 1, H, BH, D_OFF, DB, DV, 1)
    v = _interleave(v_e, v_o, BT, BH, DB)
    tl.store(ptr + offs, v.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fwd_tensor(x_ptr, w_ptr, out_ptr, b, pos, tok, mask_T, s_b, s_l, s_h, s_d, eps,
                c1, s1, c2, s2, H: tl.constexpr, BH: tl.constexpr, DH: tl.constexpr,
                D1: tl.constexpr, D1V: tl.constexpr, D2: tl.constexpr, BT: tl.constexpr,
                ALIGN: tl.constexpr):  # fmt: skip
    """All heads of one tensor for one token block; every step works on the pair halves
    (``[BT, BH, D/2]``), so both parts' reductions share one layout."""
    base = _token_base(b, pos, s_b, s_l, ALIGN)
    out_base = tok * (H * DH)
    w1_e, w1_o = _weight_pairs(w_ptr, 0, D1, D1V)
    if D2 > 0:
        w2_e, w2_o = _weight_pairs(w_ptr, D1, D2, DH - D1)
    for h0 in range(0, H, BH):
        x1_e, x1_o = _load_part(x_ptr, base, mask_T, h0, s_h, s_d, H, BH, 0, D1, D1V, ALIGN, BT)
        ss = tl.sum(x1_e * x1_e + x1_o * x1_o, axis=2)
        if D2 > 0:
            x2_e, x2_o = _load_part(
                x_ptr, base, mask_T, h0, s_h, s_d, H, BH, D1, D2, DH - D1, ALIGN, BT
            )
            ss += tl.sum(x2_e * x2_e + x2_o * x2_o, axis=2)
        rstd = (1.0 / tl.sqrt(ss / DH + eps))[:, :, None]
        a = x1_e * rstd * w1_e
        b1 = x1_o * rstd * w1_o
        _store_part(out_ptr, out_base, mask_T, h0, a * c1 - b1 * s1, a * s1 + b1 * c1,
                    H, BH, DH, 0, D1, D1V, BT)  # fmt: skip
        if D2 > 0:
            a2 = x2_e * rstd * w2_e
            b2 = x2_o * rstd * w2_o
            _store_part(out_ptr, out_base, mask_T, h0, a2 * c2 - b2 * s2, a2 * s2 + b2 * c2,
                        H, BH, DH, D1, D2, DH - D1, BT)  # fmt: skip


@triton.jit
def _tables(cos_ptr, sin_ptr, b, pos, mask_T, sc_b, sc_l, sc_p, ss_b, ss_l, ss_p,
            DH: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr, T_ALIGN: tl.constexpr):  # fmt: skip
    """cos/sin of each token for both head-dim parts (part 2 repeats part 1 when D2 = 0)."""
    c1 = _table(cos_ptr, b, pos, sc_b, sc_l, sc_p, mask_T, DH // 2, 0, D1 // 2, T_ALIGN)
    s1 = _table(sin_ptr, b, pos, ss_b, ss_l, ss_p, mask_T, DH // 2, 0, D1 // 2, T_ALIGN)
    if D2 > 0:
        c2 = _table(cos_ptr, b, pos, sc_b, sc_l, sc_p, mask_T, DH // 2, D1 // 2, D2 // 2, T_ALIGN)
        s2 = _table(sin_ptr, b, pos, ss_b, ss_l, ss_p, mask_T, DH // 2, D1 // 2, D2 // 2, T_ALIGN)
    else:
        c2 = c1
        s2 = s1
    return c1, s1, c2, s2


@triton.jit
def qk_fwd_kernel(
    q_ptr, k_ptr, qw_ptr, kw_ptr, cos_ptr, sin_ptr, qo_ptr, ko_ptr,
    NT, L, tokens_per_prog, eps,
    sq_b, sq_l, sq_h, sq_d, sk_b, sk_l, sk_h, sk_d,
    sc_b, sc_l, sc_p, ss_b, ss_l, ss_p,
    HQ: tl.constexpr, HK: tl.constexpr, BHQ: tl.constexpr, BHK: tl.constexpr,
    DH: tl.constexpr, D1: tl.constexpr, D1V: tl.constexpr, D2: tl.constexpr,
    BT: tl.constexpr, Q_ALIGN: tl.constexpr, K_ALIGN: tl.constexpr, T_ALIGN: tl.constexpr,
):  # fmt: skip
    start = tl.program_id(0).to(tl.int64) * tokens_per_prog
    for t0 in range(0, tokens_per_prog, BT):
        local = t0 + tl.arange(0, BT)
        tok = start + local
        mask_T = (tok < NT) & (local < tokens_per_prog)
        b = tok // L
        pos = tok % L
        c1, s1, c2, s2 = _tables(cos_ptr, sin_ptr, b, pos, mask_T, sc_b, sc_l, sc_p,
                                 ss_b, ss_l, ss_p, DH, D1, D2, T_ALIGN)  # fmt: skip
        _fwd_tensor(q_ptr, qw_ptr, qo_ptr, b, pos, tok, mask_T, sq_b, sq_l, sq_h, sq_d, eps,
                    c1, s1, c2, s2, HQ, BHQ, DH, D1, D1V, D2, BT, Q_ALIGN)  # fmt: skip
        _fwd_tensor(k_ptr, kw_ptr, ko_ptr, b, pos, tok, mask_T, sk_b, sk_l, sk_h, sk_d, eps,
                    c1, s1, c2, s2, HK, BHK, DH, D1, D1V, D2, BT, K_ALIGN)  # fmt: skip


@triton.jit
def _bwd_pairs(do_e, do_o, x_e, x_o, rstd, w_e, w_o, c, s):
    """Normalised input pairs and the gradient w.r.t. them, before the RMS projection; the
    output gradient is rotated back (transposed rotation) first."""
    xh_e = x_e * rstd
    xh_o = x_o * rstd
    du_e = do_e * c + do_o * s
    du_o = do_o * c - do_e * s
    return xh_e, xh_o, du_e, du_o, du_e * w_e, du_o * w_o


@triton.jit
def _add_dw(acc_e, acc_o, v_e, v_o, DW_RED: tl.constexpr):
    """Accumulate weight-gradient terms: whole tiles, or (``DW_RED``) summed over tokens and
    heads first into ``[1, 1, D/2]`` accumulators (fewer registers, a reduction per step)."""
    if DW_RED:
        acc_e += tl.sum(tl.sum(v_e, axis=0), axis=0)[None, None, :]
        acc_o += tl.sum(tl.sum(v_o, axis=0), axis=0)[None, None, :]
    else:
        acc_e += v_e
        acc_o += v_o
    return acc_e, acc_o


@triton.jit
def _bwd_tensor(do_ptr, x_ptr, w_ptr, dx_ptr, b, pos, tok, mask_T,
                sdo_b, sdo_l, sdo_h, sdo_d, s_b, s_l, s_h, s_d, eps, c1, s1, c2, s2,
                dw1_e, dw1_o, dw2_e, dw2_o,
                H: tl.constexpr, BH: tl.constexpr, DH: tl.constexpr, D1: tl.constexpr,
                D1V: tl.constexpr, D2: tl.constexpr, BT: tl.constexpr, ALIGN: tl.constexpr,
                DO_ALIGN: tl.constexpr, DW_RED: tl.constexpr):  # fmt: skip
    base = _token_base(b, pos, s_b, s_l, ALIGN)
    dbase = _token_base(b, pos, sdo_b, sdo_l, DO_ALIGN)
    out_base = tok * (H * DH)
    w1_e, w1_o = _weight_pairs(w_ptr, 0, D1, D1V)
    if D2 > 0:
        w2_e, w2_o = _weight_pairs(w_ptr, D1, D2, DH - D1)
    for h0 in range(0, H, BH):
        x1_e, x1_o = _load_part(x_ptr, base, mask_T, h0, s_h, s_d, H, BH, 0, D1, D1V, ALIGN, BT)
        d1_e, d1_o = _load_part(
            do_ptr, dbase, mask_T, h0, sdo_h, sdo_d, H, BH, 0, D1, D1V, DO_ALIGN, BT
        )
        ss = tl.sum(x1_e * x1_e + x1_o * x1_o, axis=2)
        if D2 > 0:
            x2_e, x2_o = _load_part(
                x_ptr, base, mask_T, h0, s_h, s_d, H, BH, D1, D2, DH - D1, ALIGN, BT
            )
            d2_e, d2_o = _load_part(
                do_ptr, dbase, mask_T, h0, sdo_h, sdo_d, H, BH, D1, D2, DH - D1, DO_ALIGN, BT
            )
            ss += tl.sum(x2_e * x2_e + x2_o * x2_o, axis=2)
        rstd = (1.0 / tl.sqrt(ss / DH + eps))[:, :, None]
        xh1_e, xh1_o, du1_e, du1_o, g1_e, g1_o = _bwd_pairs(
            d1_e, d1_o, x1_e, x1_o, rstd, w1_e, w1_o, c1, s1
        )
        dw1_e, dw1_o = _add_dw(dw1_e, dw1_o, du1_e * xh1_e, du1_o * xh1_o, DW_RED)
        dot = tl.sum(g1_e * xh1_e + g1_o * xh1_o, axis=2)
        if D2 > 0:
            xh2_e, xh2_o, du2_e, du2_o, g2_e, g2_o = _bwd_pairs(
                d2_e, d2_o, x2_e, x2_o, rstd, w2_e, w2_o, c2, s2
            )
            dw2_e, dw2_o = _add_dw(dw2_e, dw2_o, du2_e * xh2_e, du2_o * xh2_o, DW_RED)
            dot += tl.sum(g2_e * xh2_e + g2_o * xh2_o, axis=2)
        dot = (dot / DH)[:, :, None]
        _store_part(dx_ptr, out_base, mask_T, h0, (g1_e - xh1_e * dot) * rstd,
                    (g1_o - xh1_o * dot) * rstd, H, BH, DH, 0, D1, D1V, BT)  # fmt: skip
        if D2 > 0:
            _store_part(dx_ptr, out_base, mask_T, h0, (g2_e - xh2_e * dot) * rstd,
                        (g2_o - xh2_o * dot) * rstd, H, BH, DH, D1, D2, DH - D1, BT)  # fmt: skip
    return dw1_e, dw1_o, dw2_e, dw2_o


@triton.jit
def _store_dw(dw_ptr, dw1_e, dw1_o, dw2_e, dw2_o, DH: tl.constexpr, D1: tl.constexpr,
              D1V: tl.constexpr, D2: tl.constexpr):  # fmt: skip
    """Weight-gradient partials (summed over tokens and heads) at the even/odd channels."""
    d1 = 2 * tl.arange(0, D1 // 2)
    m1 = d1 < D1V
    tl.store(dw_ptr + d1, tl.sum(tl.sum(dw1_e, axis=0), axis=0), mask=m1)
    tl.store(dw_ptr + d1 + 1, tl.sum(tl.sum(dw1_o, axis=0), axis=0), mask=m1)
    if D2 > 0:
        d2 = D1 + 2 * tl.arange(0, D2 // 2)
        m2 = d2 < DH
        tl.store(dw_ptr + d2, tl.sum(tl.sum(dw2_e, axis=0), axis=0), mask=m2)
        tl.store(dw_ptr + d2 + 1, tl.sum(tl.sum(dw2_o, axis=0), axis=0), mask=m2)


@triton.jit
def qk_bwd_kernel(
    dqo_ptr, dko_ptr, q_ptr, k_ptr, qw_ptr, kw_ptr, cos_ptr, sin_ptr, dq_ptr, dk_ptr, dw_ptr,
    NT, L, tokens_per_prog, eps,
    sdq_b, sdq_l, sdq_h, sdq_d, sdk_b, sdk_l, sdk_h, sdk_d,
    sq_b, sq_l, sq_h, sq_d, sk_b, sk_l, sk_h, sk_d,
    sc_b, sc_l, sc_p, ss_b, ss_l, ss_p,
    HQ: tl.constexpr, HK: tl.constexpr, BHQ: tl.constexpr, BHK: tl.constexpr,
    DH: tl.constexpr, D1: tl.constexpr, D1V: tl.constexpr, D2: tl.constexpr,
    BT: tl.constexpr, Q_ALIGN: tl.constexpr, K_ALIGN: tl.constexpr, DQ_ALIGN: tl.constexpr,
    DK_ALIGN: tl.constexpr, T_ALIGN: tl.constexpr, DO_Q: tl.constexpr, DO_K: tl.constexpr,
    P2: tl.constexpr, DW_RED: tl.constexpr,
):  # fmt: skip
    """Gradients of q and k (each only when ``DO_Q`` / ``DO_K``); weight-gradient partials of
    program ``pid`` go to ``dw[pid, 0]`` (q) and ``dw[pid, 1]`` (k). ``P2 = max(D2 / 2, 1)``;
    ``AT``, ``AHQ``, ``AHK``: accumulator tile (``BT``, ``BHQ``, ``BHK``, or 1 with ``DW_RED``)."""
    pid = tl.program_id(0)
    start = pid.to(tl.int64) * tokens_per_prog
    AT: tl.constexpr = 1 if DW_RED else BT
    AHQ: tl.constexpr = 1 if DW_RED else BHQ
    AHK: tl.constexpr = 1 if DW_RED else BHK
    dwq1_e = tl.zeros([AT, AHQ, D1 // 2], dtype=tl.float32)
    dwq1_o = tl.zeros([AT, AHQ, D1 // 2], dtype=tl.float32)
    dwq2_e = tl.zeros([AT, AHQ, P2], dtype=tl.float32)
    dwq2_o = tl.zeros([AT, AHQ, P2], dtype=tl.float32)
    dwk1_e = tl.zeros([AT, AHK, D1 // 2], dtype=tl.float32)
    dwk1_o = tl.zeros([AT, AHK, D1 // 2], dtype=tl.float32)
    dwk2_e = tl.zeros([AT, AHK, P2], dtype=tl.float32)
    dwk2_o = tl.zeros([AT, AHK, P2], dtype=tl.float32)
    for t0 in range(0, tokens_per_prog, BT):
        local = t0 + tl.arange(0, BT)
        tok = start + local
        mask_T = (tok < NT) & (local < tokens_per_prog)
        b = tok // L
        pos = tok % L
        c1, s1, c2, s2 = _tables(cos_ptr, sin_ptr, b, pos, mask_T, sc_b, sc_l, sc_p,
                                 ss_b, ss_l, ss_p, DH, D1, D2, T_ALIGN)  # fmt: skip
        if DO_Q:
            dwq1_e, dwq1_o, dwq2_e, dwq2_o = _bwd_tensor(
                dqo_ptr, q_ptr, qw_ptr, dq_ptr, b, pos, tok, mask_T,
                sdq_b, sdq_l, sdq_h, sdq_d, sq_b, sq_l, sq_h, sq_d, eps, c1, s1, c2, s2,
                dwq1_e, dwq1_o, dwq2_e, dwq2_o, HQ, BHQ, DH, D1, D1V, D2, BT, Q_ALIGN, DQ_ALIGN, DW_RED,
            )  # fmt: skip
        if DO_K:
            dwk1_e, dwk1_o, dwk2_e, dwk2_o = _bwd_tensor(
                dko_ptr, k_ptr, kw_ptr, dk_ptr, b, pos, tok, mask_T,
                sdk_b, sdk_l, sdk_h, sdk_d, sk_b, sk_l, sk_h, sk_d, eps, c1, s1, c2, s2,
                dwk1_e, dwk1_o, dwk2_e, dwk2_o, HK, BHK, DH, D1, D1V, D2, BT, K_ALIGN, DK_ALIGN, DW_RED,
            )  # fmt: skip
    if DO_Q:
        _store_dw(dw_ptr + pid * (2 * DH), dwq1_e, dwq1_o, dwq2_e, dwq2_o, DH, D1, D1V, D2)
    if DO_K:
        _store_dw(dw_ptr + pid * (2 * DH) + DH, dwk1_e, dwk1_o, dwk2_e, dwk2_o, DH, D1, D1V, D2)
