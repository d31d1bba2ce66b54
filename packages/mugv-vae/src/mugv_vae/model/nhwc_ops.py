"""Inference-only fused ops for channels-last VAE activations (Triton), with torch fallbacks.

Tensor legend: N samples, S spatial positions (H*W or T*H*W), C channels, G groups; an
activation ``[N, C, *spatial]`` stored channels-last is the contiguous matrix ``[N, S, C]``.

- :func:`group_norm_silu_nhwc`: ``silu(GroupNorm(x + in_bias))``. ``in_bias`` is the bias of
  the convolution that produced ``x``, run without it: the separate bias pass disappears.
  Two passes over ``x``: per-program group statistics (mean and M2 over a run of position
  tiles, merged with Chan's formula; ``[N, P, G]`` partials, stores contiguous), a small
  torch combine into per-channel scale/shift, then one apply pass.
- :func:`bias_residual_nhwc`: ``x + bias + residual`` in one pass (the second convolution of
  a res-block, run without its bias, plus the shortcut).
- :func:`chunked_attention`: single-head attention with a wide head (the trunk's mid-block,
  head dim 512, beyond the flash kernels) as cuBLAS products over query chunks: fp32 scores
  (scale folded into the product), fp32 softmax, probabilities rounded to the input dtype
  for the second product (as flash attention does).

Used by the trunk and the temporal VAE when ``VAEConfig.fused_nhwc_ops`` is on, for CUDA
channels-last tensors with power-of-two channel and group sizes and no autograd; every other
case takes the plain torch expression (same maths). Statistics in fp32.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

try:  # triton is optional (CPU installs)
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only without triton
    triton = None

TILE_ELEMS = 8192
"""Elements per tile (rows x channels) of both kernels."""

TILES_PER_PROGRAM = 8
"""Position tiles each statistics program reduces before writing its partials."""


INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
"""Under triton's CPU interpreter the kernels also take CPU tensors (tests)."""


def _pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


def as_nsc(x: torch.Tensor) -> torch.Tensor | None:
    """``[N, S, C]`` view of a channels-last ``x [N, C, *spatial]``, or None if not one."""
    if x.ndim < 3:
        return None
    moved = x.movedim(1, -1)
    if not moved.is_contiguous():
        return None
    return moved.view(x.shape[0], -1, x.shape[1])


def kernels_apply(x: torch.Tensor, num_groups: int) -> bool:
    """True when the Triton kernels handle ``x`` (see the module docstring)."""
    c = x.shape[1] if x.ndim >= 3 else 0
    return (
        triton is not None
        and (x.is_cuda or INTERPRET)
        and not torch.is_grad_enabled()
        and _pow2(c)
        and c % num_groups == 0
        and _pow2(c // num_groups)
        and c <= TILE_ELEMS
        and as_nsc(x) is not None
    )


if triton is not None:

    @triton.jit
    def _gn_stats_kernel(
        x_ptr, bias_ptr, mean_ptr, m2_ptr, cnt_ptr, S, P,
        HAS_BIAS: tl.constexpr, C: tl.constexpr, G: tl.constexpr, CPG: tl.constexpr,
        BLOCK_S: tl.constexpr, TILES: tl.constexpr,
    ):  # fmt: skip
        n = tl.program_id(0).to(tl.int64)
        p = tl.program_id(1)
        rows = tl.arange(0, BLOCK_S)
        grp = tl.arange(0, G)
        k = tl.arange(0, CPG)
        chan = grp[:, None] * CPG + k[None, :]  # [G, CPG]
        if HAS_BIAS:
            cb = tl.load(bias_ptr + chan).to(tl.float32)
        run_n = 0.0
        run_mean = tl.zeros([G], dtype=tl.float32)
        run_m2 = tl.zeros([G], dtype=tl.float32)
        for t in range(TILES):
            s0 = (p * TILES + t) * BLOCK_S
            valid = (s0 + rows) < S
            offs = (n * S + s0 + rows[:, None, None]).to(tl.int64) * C + chan[None, :, :]
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
        tl.store(mean_ptr + dst, run_mean)
        tl.store(m2_ptr + dst, run_m2)
        tl.store(cnt_ptr + n * P + p, run_n)

    @triton.jit
    def _scale_shift_silu_kernel(
        x_ptr, out_ptr, a_ptr, b_ptr, S, C: tl.constexpr, BLOCK_S: tl.constexpr
    ):  # fmt: skip
        n = tl.program_id(0).to(tl.int64)
        s0 = tl.program_id(1) * BLOCK_S
        rows = s0 + tl.arange(0, BLOCK_S)
        cols = tl.arange(0, C)
        mask = (rows < S)[:, None]
        offs = (n * S + rows[:, None]).to(tl.int64) * C + cols[None, :]
        a = tl.load(a_ptr + n * C + cols)[None, :]
        b = tl.load(b_ptr + n * C + cols)[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        z = x * a + b
        y = z / (1.0 + tl.exp(-z))
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _bias_residual_kernel(
        x_ptr, bias_ptr, r_ptr, out_ptr, M, C: tl.constexpr, BLOCK_M: tl.constexpr
    ):  # fmt: skip
        m0 = tl.program_id(0).to(tl.int64) * BLOCK_M
        rows = m0 + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, C)
        mask = (rows < M)[:, None]
        offs = rows[:, None] * C + cols[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        r = tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(bias_ptr + cols).to(tl.float32)[None, :]
        tl.store(out_ptr + offs, (x + b + r).to(out_ptr.dtype.element_ty), mask=mask)


if triton is not None:

    @triton.jit
    def _phase_interleave_kernel(
        src_ptr, bias_ptr, out_ptr, H, W,
        HAS_BIAS: tl.constexpr, C: tl.constexpr, BLOCK_P: tl.constexpr,
    ):  # fmt: skip
        """``out[n, 2i+a, 2j+b, c] = src[n, i+a, j+b, (2a+b)*C + c] (+ bias[c])`` (NHWC)."""
        n = tl.program_id(0).to(tl.int64)
        p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
        mask = (p < 4 * H * W)[:, None]
        oy = p // (2 * W)
        ox = p % (2 * W)
        a = oy % 2
        b = ox % 2
        src_pix = (n * (H + 1) + oy // 2 + a) * (W + 1) + ox // 2 + b
        cols = tl.arange(0, C)
        src = src_pix[:, None] * (4 * C) + ((2 * a + b) * C)[:, None] + cols[None, :]
        x = tl.load(src_ptr + src, mask=mask, other=0.0)
        if HAS_BIAS:
            x = (x.to(tl.float32) + tl.load(bias_ptr + cols).to(tl.float32)[None, :]).to(
                out_ptr.dtype.element_ty
            )
        dst = (n * 4 * H * W + p)[:, None] * C + cols[None, :]
        tl.store(out_ptr + dst, x, mask=mask)


def phase_interleave_applies(x: torch.Tensor, channels: int) -> bool:
    """True when :func:`phase_interleave` runs its kernel for a conv of channels-last ``x``."""
    return (
        x.ndim == 4
        and triton is not None
        and (x.is_cuda or INTERPRET)
        and not torch.is_grad_enabled()
        and _pow2(channels)
        and as_nsc(x) is not None
    )


def phase_interleave(
    phases: torch.Tensor, channels: int, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``[N, 4C, H+1, W+1]`` channels-last phase outputs of a folded up-sampling conv (run
    without its bias) -> ``[N, C, 2H, 2W]`` channels-last plus ``bias``, in one Triton pass
    (only where :func:`phase_interleave_applies`)."""
    if not phase_interleave_applies(phases, channels):
        raise ValueError(f"phase_interleave needs channels-last CUDA phases, got {phases.shape}")
    n, _, h1, w1 = phases.shape
    h, w = h1 - 1, w1 - 1
    out = torch.empty(
        (n, channels, 2 * h, 2 * w), device=phases.device, dtype=phases.dtype
    ).contiguous(memory_format=torch.channels_last)
    block = _block_rows(channels)
    _phase_interleave_kernel[(n, triton.cdiv(4 * h * w, block))](
        as_nsc(phases), bias if bias is not None else phases, as_nsc(out), h, w,
        HAS_BIAS=bias is not None, C=channels, BLOCK_P=block, num_warps=8,
    )  # fmt: skip
    return out


def _block_rows(c: int) -> int:
    return max(1, TILE_ELEMS // c)


def group_norm_silu_nhwc(
    x: torch.Tensor,
    norm: torch.nn.GroupNorm,
    in_bias: torch.Tensor | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    """``silu(norm(x + in_bias))`` keeping ``x``'s memory format (see the module docstring).
    ``inplace``: the kernel path writes the result over ``x`` (a dead temporary)."""
    g = norm.num_groups
    if not kernels_apply(x, g):
        if in_bias is not None:
            x = x + in_bias.view(1, -1, *([1] * (x.ndim - 2)))
        return F.silu(norm(x))
    x_nsc = as_nsc(x)
    n, s, c = x_nsc.shape
    cpg = c // g
    block_s = _block_rows(c)
    tiles = min(TILES_PER_PROGRAM, triton.cdiv(s, block_s))
    progs = triton.cdiv(triton.cdiv(s, block_s), tiles)
    mean_p = torch.empty(n, progs, g, device=x.device, dtype=torch.float32)
    m2_p = torch.empty_like(mean_p)
    cnt_p = torch.empty(n, progs, device=x.device, dtype=torch.float32)
    bias_arg = in_bias if in_bias is not None else mean_p
    _gn_stats_kernel[(n, progs)](
        x_nsc, bias_arg, mean_p, m2_p, cnt_p, s, progs,
        HAS_BIAS=in_bias is not None, C=c, G=g, CPG=cpg, BLOCK_S=block_s,
        TILES=tiles, num_warps=8,
    )  # fmt: skip
    # Chan's combine over the programs of each sample: [N, P, G] -> [N, G].
    cnt = cnt_p.unsqueeze(-1)
    total = cnt.sum(dim=1)
    mean = (cnt * mean_p).sum(dim=1) / total
    m2 = m2_p.sum(dim=1) + (cnt * (mean_p - mean.unsqueeze(1)).square()).sum(dim=1)
    rstd = torch.rsqrt(m2 / total + norm.eps)
    # Per-channel scale/shift: silu(a * x + b), the conv bias folded into b.
    w = norm.weight.float() if norm.weight is not None else torch.ones(c, device=x.device)
    beta = norm.bias.float() if norm.bias is not None else torch.zeros(c, device=x.device)
    a = rstd.repeat_interleave(cpg, dim=1) * w
    shift = mean.repeat_interleave(cpg, dim=1)
    if in_bias is not None:
        shift = shift - in_bias.float()
    b = (beta - shift * a).contiguous()
    out = x if inplace else torch.empty_like(x)
    _scale_shift_silu_kernel[(n, triton.cdiv(s, block_s))](
        x_nsc, as_nsc(out), a.contiguous(), b, s, C=c, BLOCK_S=block_s, num_warps=8
    )
    return out


def bias_residual_nhwc(
    x: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor
) -> torch.Tensor:
    """``x + bias + residual`` (bias per channel), written over ``x`` when autograd is off:
    one Triton pass for channels-last CUDA tensors of the same layout, else torch."""
    if bias is None:
        return x + residual if torch.is_grad_enabled() else x.add_(residual)
    c = x.shape[1]
    x_nsc, r_nsc = as_nsc(x), as_nsc(residual)
    if not (kernels_apply(x, 1) and r_nsc is not None and x_nsc is not None):
        out = x + bias.view(1, -1, *([1] * (x.ndim - 2)))
        return out + residual if torch.is_grad_enabled() else out.add_(residual)
    m = x_nsc.shape[0] * x_nsc.shape[1]
    block_m = _block_rows(c)
    out = x  # each program reads its tile before writing it
    _bias_residual_kernel[(triton.cdiv(m, block_m),)](
        x_nsc, bias, r_nsc, as_nsc(out), m, C=c, BLOCK_M=block_m, num_warps=8
    )
    return out


ATTENTION_CHUNK_BYTES = 256 << 20
"""fp32 score bytes per query chunk of :func:`chunked_attention`."""


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` for ``[B, heads, L, d]`` tensors, over query chunks
    (see the module docstring). CPU tensors compute the products in fp32."""
    b, heads, length, d = q.shape
    q3, k3, v3 = (t.reshape(b * heads, -1, t.shape[-1]) for t in (q, k, v))
    kt = k3.transpose(1, 2)
    chunk = max(1, ATTENTION_CHUNK_BYTES // (4 * k3.shape[1] * max(1, b * heads)))
    out = torch.empty((b * heads, length, v3.shape[-1]), device=q.device, dtype=q.dtype)
    scale = d**-0.5
    for s in range(0, length, chunk):
        qc = q3[:, s : s + chunk]
        if q.is_cuda:
            scores = torch.bmm(qc, kt, out_dtype=torch.float32).mul_(scale)
        else:
            scores = torch.bmm(qc.float(), kt.float()).mul_(scale)
        probs = torch.softmax(scores, dim=-1)
        del scores
        if q.is_cuda:
            out[:, s : s + chunk] = torch.bmm(probs.to(v3.dtype), v3)
        else:
            out[:, s : s + chunk] = torch.bmm(probs, v3.float()).to(out.dtype)
    return out.view(b, heads, length, -1)
