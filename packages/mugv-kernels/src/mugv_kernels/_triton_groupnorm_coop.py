"""Cooperative two-pass GroupNorm + SiLU for channels-first activations (kernel 4).

Geometry: contiguous ``x [N, C, S]``; group ``g = n * G + c // cpg`` is the contiguous range of
rows ``nc = g * cpg .. g * cpg + cpg - 1``. A group is cut into ``K`` *items*: ``CPC`` whole
channels each (``KC = 1``) or one ``SC``-element chunk of one channel (``CPC = 1``). Items are
numbered group by group; persistent program ``pid`` takes items ``pid, pid + P, ...`` where the
host makes ``P`` a multiple of ``K`` and at most the number of co-resident programs, so the
``K`` items of a group run at the same time on distinct programs.

Per item: (1) statistics of its chunk (forward: per-channel mean and M2; backward: per-channel
sums of dz and dz * x_hat) are written to ``[N*C, KC]`` partial buffers and the group's
arrival counter is raised; (2) software-pipelined by one item, the program then waits until
all ``K`` items of its *previous* item's group have arrived (their partners had a whole item's
time to get there), combines that group's partials and re-reads the previous chunk, which it
read one item ago (an L2 hit), to write ``y`` (or ``dx``). So ``x`` (and ``dy``) leave DRAM
once: the two-pass floor. No deadlock: arrivals of round ``r`` only wait on round ``r - 2``.
Under the CPU interpreter programs run one after another, so the host uses ``K = 1``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from mugv_kernels._triton_groupnorm import _silu_parts


@triton.jit
def _item(item, cpg, K, KC, SC, S, CPC: tl.constexpr):
    """Group, first channel row, chunk index and element range ``[s0, s1)`` of an item."""
    g = item // K
    r = item % K
    nc0 = g * cpg + (r // KC) * CPC
    chunk = r % KC
    s0 = chunk * SC
    s1 = tl.minimum(S, s0 + SC)
    return g, nc0.to(tl.int64), chunk, s0, s1


@triton.jit
def _arrive(cnt_ptr, g):
    """Count this item's partials of group ``g`` as written."""
    tl.debug_barrier()  # every thread's partial stores precede the release below
    tl.atomic_add(cnt_ptr + g, 1, sem="release")


@triton.jit
def _wait(cnt_ptr, g, K):
    """Spin until all ``K`` items of group ``g`` have arrived."""
    seen = tl.atomic_add(cnt_ptr + g, 0, sem="acquire")
    while seen < K:
        seen = tl.atomic_add(cnt_ptr + g, 0, sem="acquire")
    tl.debug_barrier()


@triton.jit
def _group_mean_rstd(mean_c_ptr, m2_c_ptr, g, cpg, KC, SC, S, eps, CB: tl.constexpr):
    """Chan's combination of the ``cpg * KC`` partials of group ``g`` (L2 reads: ``.cg``)."""
    n_part = cpg * KC
    base = g.to(tl.int64) * n_part
    total = (cpg * 1.0) * S
    acc = tl.zeros([CB], dtype=tl.float32)
    for start in range(0, n_part, CB):
        j = start + tl.arange(0, CB)
        mask = j < n_part
        cnt = tl.minimum(S - (j % KC) * SC, SC).to(tl.float32)
        m = tl.load(mean_c_ptr + base + j, mask=mask, other=0.0, cache_modifier=".cg")
        acc += tl.where(mask, cnt * m, 0.0)
    mean = tl.sum(acc, axis=0) / total
    acc2 = tl.zeros([CB], dtype=tl.float32)
    for start in range(0, n_part, CB):
        j = start + tl.arange(0, CB)
        mask = j < n_part
        cnt = tl.minimum(S - (j % KC) * SC, SC).to(tl.float32)
        m = tl.load(mean_c_ptr + base + j, mask=mask, other=0.0, cache_modifier=".cg")
        m2 = tl.load(m2_c_ptr + base + j, mask=mask, other=0.0, cache_modifier=".cg")
        acc2 += tl.where(mask, m2 + cnt * (m - mean) * (m - mean), 0.0)
    var = tl.sum(acc2, axis=0) / total
    return mean, 1.0 / tl.sqrt(var + eps)


@triton.jit
def gn_coop_fwd_kernel(
    x_ptr, out_ptr, w_ptr, b_ptr, mean_c_ptr, m2_c_ptr, cnt_ptr, mean_ptr, rstd_ptr,
    C, S, cpg, num_items, K, KC, SC, eps,
    CPC: tl.constexpr, TILE: tl.constexpr, CB: tl.constexpr,
):  # fmt: skip
    offs = tl.arange(0, TILE)
    pid = tl.program_id(0)
    progs = tl.num_programs(0)
    n_mine = tl.cdiv(num_items - pid, progs)
    for it in range(0, n_mine + 1):  # statistics of item it, then the output of item it - 1
        if it < n_mine:
            g, nc0, chunk, s0, s1 = _item(pid + it * progs, cpg, K, KC, SC, S, CPC)
            for j in range(0, CPC):
                row = (nc0 + j) * S
                run_n = 0.0
                run_mean = 0.0
                run_m2 = 0.0
                for t in range(s0, s1, TILE):
                    mask = t + offs < s1
                    x = tl.load(x_ptr + row + t + offs, mask=mask, other=0.0).to(tl.float32)
                    n_t = tl.minimum(s1 - t, TILE).to(tl.float32)
                    mean_t = tl.sum(x, axis=0) / n_t
                    d = tl.where(mask, x - mean_t, 0.0)
                    delta = mean_t - run_mean
                    tot = run_n + n_t
                    run_mean += delta * (n_t / tot)
                    run_m2 += tl.sum(d * d, axis=0) + delta * delta * (run_n * n_t / tot)
                    run_n = tot
                tl.store(mean_c_ptr + (nc0 + j) * KC + chunk, run_mean)
                tl.store(m2_c_ptr + (nc0 + j) * KC + chunk, run_m2)
            _arrive(cnt_ptr, g)
        if it > 0:
            item = pid + (it - 1) * progs
            g, nc0, chunk, s0, s1 = _item(item, cpg, K, KC, SC, S, CPC)
            _wait(cnt_ptr, g, K)
            mean, rstd = _group_mean_rstd(mean_c_ptr, m2_c_ptr, g, cpg, KC, SC, S, eps, CB)
            if item % K == 0:
                tl.store(mean_ptr + g, mean)
                tl.store(rstd_ptr + g, rstd)
            n_tiles = tl.cdiv(s1 - s0, TILE)
            for jj in range(0, CPC):  # backwards: the most recently read tiles first
                j = CPC - 1 - jj
                c = (nc0 + j) % C
                w = tl.load(w_ptr + c).to(tl.float32)
                b = tl.load(b_ptr + c).to(tl.float32)
                row = (nc0 + j) * S
                for k in range(0, n_tiles):
                    t = s0 + (n_tiles - 1 - k) * TILE
                    mask = t + offs < s1
                    x = tl.load(x_ptr + row + t + offs, mask=mask, other=0.0).to(tl.float32)
                    _, z, sig = _silu_parts(x, mean, rstd, w, b)
                    y = (z * sig).to(out_ptr.dtype.element_ty)
                    tl.store(out_ptr + row + t + offs, y, mask=mask)


@triton.jit
def _group_m1_m2(sum_dz_ptr, sum_dzx_ptr, w_ptr, g, C, cpg, KC, S, CB: tl.constexpr):
    """``m1 = sum_c w_c a_c / count``, ``m2 = sum_c w_c b_c / count`` over the group."""
    n_part = cpg * KC
    base = g.to(tl.int64) * n_part
    acc1 = tl.zeros([CB], dtype=tl.float32)
    acc2 = tl.zeros([CB], dtype=tl.float32)
    for start in range(0, n_part, CB):
        j = start + tl.arange(0, CB)
        mask = j < n_part
        c = (base + j) // KC % C
        w = tl.load(w_ptr + c, mask=mask, other=0.0).to(tl.float32)
        a = tl.load(sum_dz_ptr + base + j, mask=mask, other=0.0, cache_modifier=".cg")
        bb = tl.load(sum_dzx_ptr + base + j, mask=mask, other=0.0, cache_modifier=".cg")
        acc1 += w * a
        acc2 += w * bb
    count = (cpg * 1.0) * S
    return tl.sum(acc1, axis=0) / count, tl.sum(acc2, axis=0) / count


@triton.jit
def gn_coop_bwd_kernel(
    dout_ptr, x_ptr, dx_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, sum_dz_ptr, sum_dzx_ptr,
    cnt_ptr, C, S, cpg, num_items, K, KC, SC,
    CPC: tl.constexpr, TILE: tl.constexpr, CB: tl.constexpr,
):  # fmt: skip
    """Per item: per-channel partial sums of dz and dz * x_hat (``[N*C, KC]``, also used by
    the host for the weight/bias gradients), group barrier, then dx."""
    offs = tl.arange(0, TILE)
    pid = tl.program_id(0)
    progs = tl.num_programs(0)
    n_mine = tl.cdiv(num_items - pid, progs)
    for it in range(0, n_mine + 1):  # sums of item it, then dx of item it - 1
        if it < n_mine:
            g, nc0, chunk, s0, s1 = _item(pid + it * progs, cpg, K, KC, SC, S, CPC)
            mean = tl.load(mean_ptr + g)
            rstd = tl.load(rstd_ptr + g)
            for j in range(0, CPC):
                c = (nc0 + j) % C
                w = tl.load(w_ptr + c).to(tl.float32)
                b = tl.load(b_ptr + c).to(tl.float32)
                row = (nc0 + j) * S
                acc_a = tl.zeros([TILE], dtype=tl.float32)
                acc_b = tl.zeros([TILE], dtype=tl.float32)
                for t in range(s0, s1, TILE):
                    mask = t + offs < s1
                    x = tl.load(x_ptr + row + t + offs, mask=mask, other=0.0).to(tl.float32)
                    dout = tl.load(dout_ptr + row + t + offs, mask=mask, other=0.0)
                    x_hat, z, sig = _silu_parts(x, mean, rstd, w, b)
                    dz = tl.where(mask, dout.to(tl.float32) * sig * (1.0 + z * (1.0 - sig)), 0.0)
                    acc_a += dz
                    acc_b += dz * x_hat
                tl.store(sum_dz_ptr + (nc0 + j) * KC + chunk, tl.sum(acc_a, axis=0))
                tl.store(sum_dzx_ptr + (nc0 + j) * KC + chunk, tl.sum(acc_b, axis=0))
            _arrive(cnt_ptr, g)
        if it > 0:
            g, nc0, chunk, s0, s1 = _item(pid + (it - 1) * progs, cpg, K, KC, SC, S, CPC)
            mean = tl.load(mean_ptr + g)
            rstd = tl.load(rstd_ptr + g)
            _wait(cnt_ptr, g, K)
            m1, m2 = _group_m1_m2(sum_dz_ptr, sum_dzx_ptr, w_ptr, g, C, cpg, KC, S, CB)
            n_tiles = tl.cdiv(s1 - s0, TILE)
            for jj in range(0, CPC):
                j = CPC - 1 - jj
                c = (nc0 + j) % C
                w = tl.load(w_ptr + c).to(tl.float32)
                b = tl.load(b_ptr + c).to(tl.float32)
                row = (nc0 + j) * S
                for k in range(0, n_tiles):
                    t = s0 + (n_tiles - 1 - k) * TILE
                    mask = t + offs < s1
                    x = tl.load(x_ptr + row + t + offs, mask=mask, other=0.0).to(tl.float32)
                    dout = tl.load(dout_ptr + row + t + offs, mask=mask, other=0.0)
                    x_hat, z, sig = _silu_parts(x, mean, rstd, w, b)
                    dz = dout.to(tl.float32) * sig * (1.0 + z * (1.0 - sig))
                    dx = (dz * w - m1 - x_hat * m2) * rstd
                    tl.store(dx_ptr + row + t + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
