"""Attention kernels behind one dispatch point (inference: forward only).

Backends: ``sdpa`` (torch SDPA: cuDNN / flash / math), ``fa4`` (FlashAttention-4's forward,
package ``flash-attn-4``, module ``flash_attn.cute``; its forward is exact at head dim 72, so
no padding is needed for inference) and ``auto`` (``fa4`` on a Hopper GPU when it imports,
else ``sdpa``). Libraries are detected by what they export: installing flash-attn-4 creates a
``flash_attn`` namespace package without flash-attn 2's functions. FA4 runs for bf16 / fp16
tensors at head dims that are multiples of 8 up to 128 (anything else takes SDPA under every
backend). ``auto`` takes FA4 for a path
(dense self-attention, varlen cross-attention) only after a start-up self-check of that path
at the model's head dim against fp32 SDPA (:func:`fa4_self_check`, once per process).

Cross-attention to padded text: SDPA takes the boolean key mask; FA4 takes the valid keys
packed (:class:`PackedText`, built once per DiT call from the mask) through its varlen
function, every sample's queries one segment. FA4 calls are opaque to ``torch.compile`` (a
graph break), so compiled blocks run them eagerly.

Legend: B batch, N query tokens, L key tokens, H heads, D head dim, T packed valid keys.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "sdpa", "fa4")


@functools.cache
def fa4_forward() -> Callable | None:
    """FlashAttention-4's ``flash_attn_func`` or None."""
    try:
        module = importlib.import_module("flash_attn.cute")
    except Exception:  # ImportError, or a CUDA / CuTe DSL set-up error on import
        return None
    return getattr(module, "flash_attn_func", None)


@functools.cache
def fa4_varlen_forward() -> Callable | None:
    """FlashAttention-4's ``flash_attn_varlen_func`` or None."""
    try:
        module = importlib.import_module("flash_attn.cute")
    except Exception:  # ImportError, or a CUDA / CuTe DSL set-up error on import
        return None
    return getattr(module, "flash_attn_varlen_func", None)


def _on_hopper(x: torch.Tensor) -> bool:
    return x.is_cuda and torch.cuda.get_device_capability(x.device)[0] == 9


def _device_index(x: torch.Tensor) -> int:
    return x.device.index if x.device.index is not None else torch.cuda.current_device()


@torch.compiler.disable  # plain Python (imports, a cached self-check): never traced
def resolve_backend(requested: str, x: torch.Tensor) -> str:
    """The self-attention backend that runs for a tensor ``x [..., head_dim]``. ``auto``
    takes FA4 on a Hopper GPU only after :func:`fa4_self_check` passed at that head dim."""
    if requested not in BACKENDS:
        raise ValueError(f"attention backend {requested!r} unknown; choose from {BACKENDS}")
    if requested == "fa4":
        if not x.is_cuda or fa4_forward() is None:
            raise ValueError(
                "attention backend 'fa4' needs a CUDA tensor and the flash-attn-4 package "
                "(flash_attn.cute); use 'sdpa' or 'auto'"
            )
        return "fa4"
    auto_fa4 = requested == "auto" and _fa4_can_run(x) and _on_hopper(x) and fa4_forward()
    if auto_fa4 and fa4_self_check("dense", x.shape[-1], _device_index(x)) is None:
        return "fa4"
    return "sdpa"


def _fa4_can_run(x: torch.Tensor) -> bool:
    """bf16 / fp16 at a head dim FA4 may take (multiple of 8, <= 128); ``auto`` still
    self-checks it before use."""
    head_dim = x.shape[-1]
    return x.dtype in (torch.bfloat16, torch.float16) and head_dim % 8 == 0 and head_dim <= 128


@torch.compiler.disable
def cross_attention_backend(requested: str, q: torch.Tensor) -> str:
    """``fa4`` when the cross-attention of ``q`` runs FA4's varlen forward (bf16 / fp16
    only), else ``sdpa``; ``auto`` after :func:`fa4_self_check` of the varlen path."""
    if requested not in BACKENDS:
        raise ValueError(f"attention backend {requested!r} unknown; choose from {BACKENDS}")
    if requested == "fa4":
        if not q.is_cuda or fa4_varlen_forward() is None:
            raise ValueError(
                "attention backend 'fa4' needs a CUDA tensor and the flash-attn-4 package "
                "(flash_attn.cute); use 'sdpa' or 'auto'"
            )
        return "fa4" if _fa4_can_run(q) else "sdpa"
    auto_fa4 = requested == "auto" and _fa4_can_run(q) and _on_hopper(q) and fa4_varlen_forward()
    if auto_fa4 and fa4_self_check("varlen", q.shape[-1], _device_index(q)) is None:
        return "fa4"
    return "sdpa"


@functools.cache
def fa4_self_check(kind: str, head_dim: int, device_index: int = 0) -> str | None:
    """Run FA4's ``kind`` forward (``dense``: one sequence per sample; ``varlen``: queries
    against packed keys of unequal lengths) in bf16 against fp32 SDPA on random inputs at
    ``head_dim``, once per process. None when within 2e-2 relative, else what failed (and
    ``auto`` then keeps SDPA for that path, with a warning)."""
    import warnings

    device = torch.device("cuda", device_index)
    g = torch.Generator(device=device).manual_seed(1234)
    try:
        q, k, v = (
            torch.randn(2, 320, 2, head_dim, generator=g, device=device, dtype=torch.bfloat16)
            for _ in range(3)
        )
        if kind == "dense":
            out = _fa4_dense(q, k, v)
            ref = _sdpa(q.float(), k.float(), v.float(), None)
        else:
            mask = torch.zeros(2, 64, dtype=torch.bool, device=device)
            mask[0, :50] = True
            mask[1, 3:40:2] = True
            k, v = k[:, :64], v[:, :64]
            out = _fa4_packed_cross(q, k, v, PackedText.from_mask(mask))
            ref = _sdpa(q.float(), k.float(), v.float(), mask)
        err = float((out.float() - ref).norm() / ref.norm())
        torch.cuda.synchronize(device)
    except Exception as exc:  # a kernel that fails to compile or launch
        problem = f"FA4 {kind} forward failed at head dim {head_dim}: {type(exc).__name__}: {exc}"
    else:
        problem = None if err < 2e-2 else f"FA4 {kind} forward rel err {err:.3g} at {head_dim}"
    if problem is not None:
        warnings.warn(f"attention backend auto keeps SDPA: {problem}", stacklevel=2)
    return problem


def _sdpa(q_BNHD, k_BLHD, v_BLHD, mask_BL: torch.Tensor | None) -> torch.Tensor:
    attn_mask = None if mask_BL is None else mask_BL[:, None, None, :].to(torch.bool)
    out_BHND = F.scaled_dot_product_attention(
        q_BNHD.transpose(1, 2), k_BLHD.transpose(1, 2), v_BLHD.transpose(1, 2), attn_mask=attn_mask
    )
    return out_BHND.transpose(1, 2)


@torch.compiler.disable
def _fa4_dense(q_BNHD, k_BNHD, v_BNHD) -> torch.Tensor:
    q_BNHD, k_BNHD, v_BNHD = (t.contiguous() for t in (q_BNHD, k_BNHD, v_BNHD))
    out = fa4_forward()(q_BNHD, k_BNHD, v_BNHD, softmax_scale=q_BNHD.shape[-1] ** -0.5)
    return out[0] if isinstance(out, tuple) else out


def dense_attention(q_BNHD, k_BNHD, v_BNHD, backend: str = "auto") -> torch.Tensor:
    """Bidirectional attention over one sequence per sample -> ``[B, N, H, D]``."""
    if resolve_backend(backend, q_BNHD) == "fa4" and _fa4_can_run(q_BNHD):
        return _fa4_dense(q_BNHD, k_BNHD, v_BNHD)
    return _sdpa(q_BNHD, k_BNHD, v_BNHD, None)


@dataclass(frozen=True)
class PackedText:
    """Where each sample's valid text keys sit once packed, sample after sample: built once
    per DiT call from the key mask (one host sync for ``max_k``), shared by every layer."""

    index_T: torch.Tensor  # flat indices into ``[B * L]`` of the valid keys, sample-major
    cu_k: torch.Tensor  # [B + 1] int32 offsets of each sample's keys in the packed tensor
    max_k: int  # most valid keys of one sample

    @classmethod
    def from_mask(cls, mask_BL: torch.Tensor) -> PackedText:
        mask_BL = mask_BL.to(torch.bool)
        counts_B = mask_BL.sum(1)
        cu_k = F.pad(counts_B.cumsum(0), (1, 0)).to(torch.int32)
        index_T = mask_BL.flatten().nonzero().squeeze(1)
        return cls(index_T=index_T, cu_k=cu_k, max_k=int(counts_B.max()))


@torch.compiler.disable
def _fa4_packed_cross(q_BNHD, k_BLHD, v_BLHD, text: PackedText) -> torch.Tensor:
    b, n, h, d = q_BNHD.shape
    k_THD = k_BLHD.reshape(-1, h, d).index_select(0, text.index_T)
    v_THD = v_BLHD.reshape(-1, h, d).index_select(0, text.index_T)
    cu_q = torch.arange(0, (b + 1) * n, n, dtype=torch.int32, device=q_BNHD.device)
    out = fa4_varlen_forward()(
        q_BNHD.reshape(b * n, h, d), k_THD, v_THD,
        cu_seqlens_q=cu_q, cu_seqlens_k=text.cu_k, max_seqlen_q=n, max_seqlen_k=text.max_k,
        softmax_scale=d**-0.5,
    )  # fmt: skip
    out = out[0] if isinstance(out, tuple) else out
    return out.view(b, n, h, d)


def masked_cross_attention(
    q_BNHD,
    k_BLHD,
    v_BLHD,
    mask_BL: torch.Tensor | None,
    backend: str = "sdpa",
    packed: PackedText | None = None,
) -> torch.Tensor:
    """Queries attend to each sample's valid keys (``mask_BL`` True) -> ``[B, N, H, D]``.

    Masked keys get zero weight, so a padded batch gives exactly the per-sample result.
    ``backend`` ``fa4`` / ``auto`` on a Hopper GPU: FA4's varlen forward on the packed valid
    keys (``packed``, else built here from the mask).
    """
    if cross_attention_backend(backend, q_BNHD) == "fa4":
        if packed is None:
            b, length = k_BLHD.shape[:2]
            full = torch.ones(b, length, dtype=torch.bool, device=k_BLHD.device)
            packed = PackedText.from_mask(full if mask_BL is None else mask_BL)
        return _fa4_packed_cross(q_BNHD, k_BLHD, v_BLHD, packed)
    return _sdpa(q_BNHD, k_BLHD, v_BLHD, mask_BL)
