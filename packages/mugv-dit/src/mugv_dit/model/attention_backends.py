"""Attention kernels behind one dispatch point: torch SDPA, flash-attn 2, FlashAttention-4.

Backends (``model.attention_backend``):

* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` (cuDNN / flash / math).
* ``flash``: flash-attn 2 (``flash_attn.flash_attn_func`` / ``flash_attn_varlen_func``).
* ``fa4``: FlashAttention-4 (package ``flash-attn-4``, ``flash_attn.cute``), Hopper/Blackwell.
* ``auto``: ``fa4`` on a Hopper GPU when it imports and passes a start-up self-check against
  an fp32 reference, else ``flash`` when flash-attn 2 is installed, else ``sdpa``.

Libraries are detected by what they export, not by their top-level name: installing
flash-attn-4 creates a ``flash_attn`` namespace package without flash-attn 2's functions.

FlashAttention-4 4.0.0b36's SM90 backward returns a wrong dq at head dims 72 and 80 (both
round to an 80-wide head-dim tile); its forward and dk/dv are right. q, k and v are therefore
zero-padded to the next head dim in :data:`FA4_EXACT_HEAD_DIMS` (72 -> 96) with the softmax
scale of the true head dim and the output sliced back: zero channels add nothing to q.k, and
the extra output channels (from zero v channels) are dropped, so the result is exact.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

BACKENDS = ("auto", "sdpa", "flash", "fa4")
# head dims whose FA4 SM90 forward AND backward match float64 (FA4 4.0.0b36, H200, 2026-12-02)
FA4_EXACT_HEAD_DIMS = (64, 88, 96, 128)
# what other head dims are padded to: the widths of FA4's own SM90 head-dim tiles
FA4_PAD_TARGETS = (64, 96, 128)


@functools.cache
def flash_attn2_functions() -> tuple[Callable, Callable] | None:
    """flash-attn 2's ``(flash_attn_func, flash_attn_varlen_func)``, or None."""
    try:
        module = importlib.import_module("flash_attn")
    except ImportError:
        return None
    dense = getattr(module, "flash_attn_func", None)
    varlen = getattr(module, "flash_attn_varlen_func", None)
    return (dense, varlen) if dense is not None and varlen is not None else None


@functools.cache
def fa4_functions() -> tuple[Callable, Callable] | None:
    """FlashAttention-4's ``(flash_attn_func, flash_attn_varlen_func)``, or None."""
    try:
        module = importlib.import_module("flash_attn.cute")
    except Exception:  # ImportError, or a CUDA/CuTe DSL set-up error on import
        return None
    dense = getattr(module, "flash_attn_func", None)
    varlen = getattr(module, "flash_attn_varlen_func", None)
    return (dense, varlen) if dense is not None and varlen is not None else None


def fa4_padded_head_dim(head_dim: int) -> int:
    """Head dim FA4 runs at: ``head_dim`` if exact there, else the next exact one."""
    if head_dim in FA4_EXACT_HEAD_DIMS:
        return head_dim
    for d in FA4_PAD_TARGETS:
        if d >= head_dim:
            return d
    raise ValueError(f"attention_backend=fa4 supports head dims <= 128, got {head_dim}")


def _pad_head_dim(x: torch.Tensor, width: int) -> torch.Tensor:
    return x if x.shape[-1] == width else F.pad(x, (0, width - x.shape[-1]))


def _fa4_call(which: int, q, k, v, **kwargs) -> torch.Tensor:
    """FA4's dense (0) or varlen (1) function on q/k/v zero-padded to an exact head dim, with
    the softmax scale of the true head dim; the output is sliced back."""
    functions = fa4_functions()
    if functions is None:
        raise RuntimeError("attention_backend=fa4 needs the flash-attn-4 package")
    d = q.shape[-1]
    width = fa4_padded_head_dim(d)
    padded = (_pad_head_dim(t, width) for t in (q, k, v))
    out, _ = functions[which](*padded, softmax_scale=d**-0.5, **kwargs)
    return out[..., :d]


def fa4_dense(q_BNHD, k_BNHD, v_BNHD) -> torch.Tensor:
    """Bidirectional FA4 attention with head-dim padding -> ``[B, N, H, D]``."""
    return _fa4_call(0, q_BNHD, k_BNHD, v_BNHD)


def fa4_varlen(q_TQHD, k_TKHD, v_TKHD, cu_q, cu_k, max_q: int, max_k: int) -> torch.Tensor:
    """Packed variable-length FA4 attention with head-dim padding -> ``[total_q, H, D]``."""
    return _fa4_call(
        1, q_TQHD, k_TKHD, v_TKHD,
        cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q, max_seqlen_k=max_k,
    )  # fmt: skip


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


@functools.cache
def fa4_self_check(head_dim: int, device_index: int = 0) -> str | None:
    """Run FA4 (dense and varlen, forward and backward, bf16) against fp32 SDPA on random
    inputs at ``head_dim``. Returns None when every output and gradient is within 2e-2
    relative, else a message saying what failed."""
    if fa4_functions() is None:
        return "flash-attn-4 (flash_attn.cute) does not import"
    device = torch.device("cuda", device_index)
    g = torch.Generator(device=device).manual_seed(1234)
    try:
        b, n, h = 2, 320, 2
        q, k, v = (
            torch.randn(b, n, h, head_dim, device=device, generator=g, dtype=torch.bfloat16)
            for _ in range(3)
        )
        dout = torch.randn(b, n, h, head_dim, device=device, generator=g, dtype=torch.bfloat16)
        problems = []
        for name, fn in (("dense", _check_dense), ("varlen", _check_varlen)):
            for what, err in fn(q, k, v, dout).items():
                if not err < 2e-2:  # also catches NaN
                    problems.append(f"{name} {what} rel err {err:.3g}")
        torch.cuda.synchronize(device)
    except Exception as exc:  # a kernel that fails to compile or launch
        return f"flash-attn-4 failed at head dim {head_dim}: {type(exc).__name__}: {exc}"
    return "; ".join(problems) or None


def _grads(fn, q, k, v, dout) -> list[torch.Tensor]:
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    out = fn(*leaves)
    out.backward(dout)
    return [out.detach(), *(t.grad for t in leaves)]


def _sdpa_reference(q, k, v) -> torch.Tensor:
    return F.scaled_dot_product_attention(
        q.float().transpose(1, 2), k.float().transpose(1, 2), v.float().transpose(1, 2)
    ).transpose(1, 2)


def _check_dense(q, k, v, dout) -> dict[str, float]:
    got = _grads(fa4_dense, q, k, v, dout)
    ref = _grads(_sdpa_reference, q, k, v, dout.float())
    return {w: _relative_error(a, r) for w, a, r in zip(("out", "dq", "dk", "dv"), got, ref)}


def _check_varlen(q, k, v, dout) -> dict[str, float]:
    """Cross-attention shape: every query row of a sample attends to that sample's keys only,
    the keys being of unequal lengths."""
    b, n, h, d = q.shape
    lengths = [n // 3, n // 5]
    cu_q = torch.arange(0, (b + 1) * n, n, dtype=torch.int32, device=q.device)
    cu_k = torch.tensor([0, lengths[0], sum(lengths)], dtype=torch.int32, device=q.device)
    k_packed = torch.cat([k[i, : lengths[i]] for i in range(b)])
    v_packed = torch.cat([v[i, : lengths[i]] for i in range(b)])

    def fa4(qq, kk, vv):
        out = fa4_varlen(qq.reshape(b * n, h, d), kk, vv, cu_q, cu_k, n, max(lengths))
        return out.view(b, n, h, d)

    def reference(qq, kk, vv):
        outs = []
        for i in range(b):
            lo, hi = int(cu_k[i]), int(cu_k[i + 1])
            outs.append(_sdpa_reference(qq[i : i + 1], kk[None, lo:hi], vv[None, lo:hi]))
        return torch.cat(outs)

    got = _grads(fa4, q, k_packed, v_packed, dout)
    ref = _grads(reference, q, k_packed, v_packed, dout.float())
    return {w: _relative_error(a, r) for w, a, r in zip(("out", "dq", "dk", "dv"), got, ref)}


def _is_hopper(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9


@functools.cache
def _auto_backend(device_type: str, device_index: int, head_dim: int) -> str:
    device = torch.device(device_type, device_index)
    if device.type == "cuda":
        if _is_hopper(device) and fa4_functions() is not None:
            problem = fa4_self_check(head_dim, device_index)
            if problem is None:
                return "fa4"
            log.warning("attention_backend=auto: not using FlashAttention-4 (%s)", problem)
        if flash_attn2_functions() is not None:
            return "flash"
    return "sdpa"


def resolve_backend(requested: str, x: torch.Tensor) -> str:
    """The backend that runs for a tensor ``x [..., head_dim]`` (bf16/fp16 for the flash
    kernels; other dtypes and CPU tensors always take SDPA under ``auto``)."""
    if requested not in BACKENDS:
        raise ValueError(f"attention_backend={requested!r} is not one of {BACKENDS}")
    if requested == "sdpa":
        return "sdpa"
    if requested == "flash":
        if flash_attn2_functions() is None or not x.is_cuda:
            raise RuntimeError(
                "attention_backend=flash needs flash-attn 2 (flash_attn.flash_attn_func) and "
                "CUDA tensors"
            )
        return "flash"
    if requested == "fa4":
        if fa4_functions() is None or not x.is_cuda:
            raise RuntimeError(
                "attention_backend=fa4 needs flash-attn-4 (flash_attn.cute) and CUDA tensors"
            )
        return "fa4"
    if not x.is_cuda or x.dtype not in (torch.bfloat16, torch.float16):
        return "sdpa"
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    return _auto_backend("cuda", index, x.shape[-1])


def dense_attention(q_BNHD, k_BNHD, v_BNHD, backend: str = "auto") -> torch.Tensor:
    """Full bidirectional attention over equal-length sequences -> ``[B, N, H, D]``."""
    chosen = resolve_backend(backend, q_BNHD)
    if chosen == "fa4":
        return fa4_dense(q_BNHD, k_BNHD, v_BNHD)
    # v may be a strided view of a fused projection: FA4 pads it into a new buffer anyway;
    # the other kernels get it contiguous
    v_BNHD = v_BNHD.contiguous()
    if chosen == "flash":
        return flash_attn2_functions()[0](q_BNHD, k_BNHD, v_BNHD)
    out_BHND = F.scaled_dot_product_attention(
        q_BNHD.transpose(1, 2), k_BNHD.transpose(1, 2), v_BNHD.transpose(1, 2)
    )
    return out_BHND.transpose(1, 2)


def varlen_cross_attention(
    q_BNHD: torch.Tensor,
    k_LHD: torch.Tensor,
    v_LHD: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    offsets_k: tuple[int, ...],
    backend: str = "auto",
) -> torch.Tensor:
    """Each sample's queries attend to its own slice ``[offsets_k[i], offsets_k[i+1])`` of the
    packed keys/values -> ``[B, N, H, D]``. ``offsets_k`` is the host copy of
    ``cu_seqlens_k`` (no device sync)."""
    b, n, h, d = q_BNHD.shape
    chosen = resolve_backend(backend, q_BNHD)
    if chosen in ("fa4", "flash"):
        cu_q = torch.arange(0, (b + 1) * n, n, dtype=torch.int32, device=q_BNHD.device)
        cu_k = cu_seqlens_k.to(q_BNHD.device, torch.int32)
        max_k = max(hi - lo for lo, hi in itertools.pairwise(offsets_k))
        q_TQHD = q_BNHD.reshape(b * n, h, d)
        if chosen == "fa4":
            out = fa4_varlen(q_TQHD, k_LHD, v_LHD, cu_q, cu_k, n, max_k)
        else:
            out = flash_attn2_functions()[1](q_TQHD, k_LHD, v_LHD, cu_q, cu_k, n, max_k)
        return out.view(b, n, h, d)
    outs = []
    for i in range(b):
        k = k_LHD[offsets_k[i] : offsets_k[i + 1]].transpose(0, 1)[None]
        v = v_LHD[offsets_k[i] : offsets_k[i + 1]].transpose(0, 1)[None]
        q = q_BNHD[i : i + 1].transpose(1, 2)
        outs.append(F.scaled_dot_product_attention(q, k, v).transpose(1, 2))
    return torch.cat(outs, dim=0)


__all__ = [
    "BACKENDS",
    "FA4_EXACT_HEAD_DIMS",
    "FA4_PAD_TARGETS",
    "dense_attention",
    "fa4_dense",
    "fa4_functions",
    "fa4_padded_head_dim",
    "fa4_self_check",
    "fa4_varlen",
    "flash_attn2_functions",
    "resolve_backend",
    "varlen_cross_attention",
]
