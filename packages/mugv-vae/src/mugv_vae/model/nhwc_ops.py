"""Inference-only fused ops for channels-last VAE activations (Triton), with torch fallbacks.

Tensor legend: N samples, S spatial positions (H*W or T*H*W), C channels, G groups; an
activation ``[N, C, *spatial]`` stored channels-last is the contiguous matrix ``[N, S, C]``.

- :func:`group_norm_silu_nhwc`: ``silu(GroupNorm(x + in_bias))``. ``in_bias`` is the bias of
  the convolution that produced ``x``, run without it: the separate bias pass disappears.
  Runs ``mugv_kernels.group_norm_silu(..., in_bias=...)`` (its channels-last Triton path:
  per-program group statistics, a small combine, one apply pass).
- :func:`bias_residual_nhwc`: ``x + bias + residual`` in one pass (the second convolution of
  a res-block, run without its bias, plus the shortcut): ``mugv_kernels.bias_residual``.
- :func:`phase_interleave`: the folded up-sampling convolution's four phase outputs
  interleaved into the 2x output (+ bias) in one Triton pass (VAE-specific, kept here).
- :func:`chunked_attention`: single-head attention with a wide head (the trunk's mid-block,
  head dim 512, beyond the flash kernels) as cuBLAS products over query chunks: fp32 scores
  (scale folded into the product), fp32 softmax, probabilities rounded to the input dtype
  for the second product (as flash attention does).

Used by the trunk and the temporal VAE when ``VAEConfig.fused_nhwc_ops`` is on, for CUDA
channels-last tensors and no autograd (:func:`kernels_apply`); every other case takes the
plain torch expression (same maths). Statistics in fp32.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from mugv_kernels import bias_residual, group_norm_silu
from mugv_kernels.channels_last import as_NSC as as_nsc  # [N, S, C] view or None

try:  # triton is optional (CPU installs)
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only without triton
    triton = None

TILE_ELEMS = 8192
"""Elements per tile (rows x channels) of :func:`phase_interleave`."""


INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
"""Under triton's CPU interpreter the kernels also take CPU tensors (tests)."""


def _pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


def kernels_apply(x: torch.Tensor, num_groups: int) -> bool:
    """True when the fused Triton ops handle ``x`` (see the module docstring)."""
    c = x.shape[1] if x.ndim >= 3 else 0
    return (
        triton is not None
        and (x.is_cuda or INTERPRET)
        and not torch.is_grad_enabled()
        and c > 0
        and c % num_groups == 0
        and as_nsc(x) is not None
    )


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
    return group_norm_silu(
        x, g, norm.weight, norm.bias, eps=norm.eps, in_bias=in_bias, inplace=inplace,
        use_triton=True,
    )  # fmt: skip


def bias_residual_nhwc(
    x: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor
) -> torch.Tensor:
    """``x + bias + residual`` (bias per channel), written over ``x`` when autograd is off:
    one Triton pass for channels-last CUDA tensors of the same layout, else torch."""
    if bias is None:
        return x + residual if torch.is_grad_enabled() else x.add_(residual)
    if not (kernels_apply(x, 1) and as_nsc(residual) is not None):
        out = x + bias.view(1, -1, *([1] * (x.ndim - 2)))
        return out + residual if torch.is_grad_enabled() else out.add_(residual)
    return bias_residual(x, bias, residual, inplace=True, use_triton=True)


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
