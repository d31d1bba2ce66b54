"""Triton kernels of the modulated LayerNorm fused into a linear layer's GEMM prologue.

``y = (LN(x) * (1 + scale) + shift) @ W^T (+ bias)`` without writing the normalised activation:

* :func:`ln_stats_kernel`: per-row ``mean`` and ``rstd`` (one read of ``x``); with ``HAS_Y`` it
  first forms the residual sum ``h = x + y`` (stored, rounded to its dtype) and normalises that.
* :func:`ln_linear_fwd_kernel`: the GEMM; each ``BLOCK_M x BLOCK_K`` tile of ``x`` is
  normalised and modulated in registers as it is loaded (fp32 math, rounded to the weight's
  dtype, which is what the unfused path stores), then fed to ``tl.dot``.
* :func:`ln_linear_dw_kernel`: ``dW = xn^T @ dY`` with the same prologue on ``x`` (the
  normalised activation is recomputed, never stored).

Rows are tokens ``[M, K]`` (leading dims flattened). Modulation vectors come from two
``[T, K]`` tables (``1 + scale`` is formed in the kernel) addressed by a per-row ``int32`` index
``idx[M]``: per sample ``T = N`` (``idx = row // L``), per branch ``T = 2N`` (``idx = 2 * n +
branch``), per token ``T = M``. Same normalisation formula as :mod:`._triton_modnorm`.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def ln_stats_kernel(
    x_ptr, y_ptr, h_ptr, mean_ptr, rstd_ptr,
    M, K, eps,
    sx_m, sy_m, sh_m,
    HAS_Y: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    mask_r = rows < M
    mask = mask_r[:, None] & (offs_k < K)[None, :]
    v = tl.load(x_ptr + rows[:, None] * sx_m + offs_k[None, :], mask=mask, other=0.0)
    if HAS_Y:
        y = tl.load(y_ptr + rows[:, None] * sy_m + offs_k[None, :], mask=mask, other=0.0)
        h = (v.to(tl.float32) + y.to(tl.float32)).to(h_ptr.dtype.element_ty)
        tl.store(h_ptr + rows[:, None] * sh_m + offs_k[None, :], h, mask=mask)
        v = h
    v = v.to(tl.float32)
    mean = tl.sum(v, axis=1) / K
    centered = tl.where(mask, v - mean[:, None], 0.0)
    var = tl.sum(centered * centered, axis=1) / K
    rstd = 1.0 / tl.sqrt(var + eps)
    tl.store(mean_ptr + rows, mean, mask=mask_r)
    tl.store(rstd_ptr + rows, rstd, mask=mask_r)


@triton.jit
def _normalised_tile(
    x_ptr, sx_m, rows, mask_m, mean, rstd, idx, shift_ptr, scale_ptr, s_t, k0, K,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    """``(LN(x) * (1 + scale) + shift)`` of rows ``rows`` and columns ``k0 + [0, BLOCK_K)``,
    fp32 ``[BLOCK_M, BLOCK_K]``, zero outside the matrix."""
    offs_k = k0 + tl.arange(0, BLOCK_K)
    mask = mask_m[:, None] & (offs_k < K)[None, :]
    x = tl.load(x_ptr + rows[:, None] * sx_m + offs_k[None, :], mask=mask, other=0.0)
    mod_offs = idx[:, None] * s_t + offs_k[None, :]
    scale = tl.load(scale_ptr + mod_offs, mask=mask, other=0.0).to(tl.float32)
    shift = tl.load(shift_ptr + mod_offs, mask=mask, other=0.0).to(tl.float32)
    x_hat = (x.to(tl.float32) - mean[:, None]) * rstd[:, None]
    out = x_hat * (1.0 + scale) + shift
    return tl.where(mask, out, 0.0)


@triton.jit
def _row_params(mean_ptr, rstd_ptr, idx_ptr, rows, mask_m):
    mean = tl.load(mean_ptr + rows, mask=mask_m, other=0.0)
    rstd = tl.load(rstd_ptr + rows, mask=mask_m, other=0.0)
    idx = tl.load(idx_ptr + rows, mask=mask_m, other=0).to(tl.int64)
    return mean, rstd, idx


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``acc + a @ b``; ``UPCAST`` feeds fp32 copies (exact products of bf16/fp16 values), for
    the CPU interpreter, whose bf16 ``tl.dot`` returns garbage (triton 3.x)."""
    if UPCAST:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        out = tl.dot(a, b, acc, input_precision=PRECISION)
    return out


@triton.jit
def _swizzle(pid, n_m, n_n, GROUP: tl.constexpr):
    """Grouped program order (``GROUP`` row tiles share the weight tiles in L2)."""
    width = GROUP * n_n
    group = pid // width
    first_m = group * GROUP
    size = tl.minimum(n_m - first_m, GROUP)
    pid_m = first_m + (pid % width) % size
    pid_n = (pid % width) // size
    return pid_m, pid_n


@triton.jit
def ln_linear_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, out_ptr, mean_ptr, rstd_ptr, idx_ptr, shift_ptr, scale_ptr,
    M, N, K,
    sx_m, sw_n, so_m, s_t,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr,
):  # fmt: skip
    n_m = tl.cdiv(M, BLOCK_M)
    n_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = _swizzle(tl.program_id(0), n_m, n_n, GROUP)
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    mask_m = rows < M
    mask_n = cols < N
    mean, rstd, idx = _row_params(mean_ptr, rstd_ptr, idx_ptr, rows, mask_m)
    dtype = w_ptr.dtype.element_ty
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a = _normalised_tile(
            x_ptr, sx_m, rows, mask_m, mean, rstd, idx, shift_ptr, scale_ptr, s_t, k0, K, BLOCK_K,
        ).to(dtype)  # rounded where the unfused path stores it
        offs_k = k0 + tl.arange(0, BLOCK_K)
        b_mask = (offs_k < K)[:, None] & mask_n[None, :]
        b = tl.load(w_ptr + cols[None, :] * sw_n + offs_k[:, None], mask=b_mask, other=0.0)
        acc = _dot(a, b, acc, PRECISION, UPCAST)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    o_mask = mask_m[:, None] & mask_n[None, :]
    tl.store(out_ptr + rows[:, None] * so_m + cols[None, :], acc.to(dtype), mask=o_mask)


@triton.jit
def ln_linear_dw_kernel(
    x_ptr, dy_ptr, dw_ptr, mean_ptr, rstd_ptr, idx_ptr, shift_ptr, scale_ptr,
    M, N, K,
    sx_m, sdy_m, sdw_n, s_t,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr,
):  # fmt: skip
    """``dW[N, K] = dY[M, N]^T @ xn[M, K]``: program (n tile, k tile), loop over rows."""
    n_n = tl.cdiv(N, BLOCK_N)
    n_k = tl.cdiv(K, BLOCK_K)
    pid_n, pid_k = _swizzle(tl.program_id(0), n_n, n_k, GROUP)
    cols = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    mask_n = cols < N
    k0 = pid_k * BLOCK_K
    dtype = dw_ptr.dtype.element_ty
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        rows = (m0 + tl.arange(0, BLOCK_M)).to(tl.int64)
        mask_m = rows < M
        mean, rstd, idx = _row_params(mean_ptr, rstd_ptr, idx_ptr, rows, mask_m)
        a = _normalised_tile(
            x_ptr, sx_m, rows, mask_m, mean, rstd, idx, shift_ptr, scale_ptr, s_t, k0, K, BLOCK_K,
        ).to(dtype)  # rounded where the unfused path stores it
        dy_mask = mask_m[:, None] & mask_n[None, :]
        dy = tl.load(dy_ptr + rows[:, None] * sdy_m + cols[None, :], mask=dy_mask, other=0.0)
        acc = _dot(tl.trans(dy.to(dtype)), a, acc, PRECISION, UPCAST)
    offs_k = k0 + tl.arange(0, BLOCK_K)
    w_mask = mask_n[:, None] & (offs_k < K)[None, :]
    tl.store(dw_ptr + cols[:, None] * sdw_n + offs_k[None, :], acc.to(dtype), mask=w_mask)
