"""Attention kernels behind one dispatch point (inference: forward only).

Backends: ``sdpa`` (torch SDPA: cuDNN / flash / math), ``fa4`` (FlashAttention-4's forward,
package ``flash-attn-4``, module ``flash_attn.cute``; its forward is exact at head dim 72, so
no padding is needed for inference) and ``auto`` (``fa4`` on a Hopper GPU when it imports,
else ``sdpa``). Libraries are detected by what they export: installing flash-attn-4 creates a
``flash_attn`` namespace package without flash-attn 2's functions.

Legend: B batch, N query tokens, L key tokens, H heads, D head dim.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable

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


def resolve_backend(requested: str, x: torch.Tensor) -> str:
    """The backend that will run for a tensor on ``x.device``."""
    if requested not in BACKENDS:
        raise ValueError(f"attention backend {requested!r} unknown; choose from {BACKENDS}")
    on_hopper = x.is_cuda and torch.cuda.get_device_capability(x.device)[0] == 9
    if requested == "fa4":
        if not x.is_cuda or fa4_forward() is None:
            raise ValueError(
                "attention backend 'fa4' needs a CUDA tensor and the flash-attn-4 package "
                "(flash_attn.cute); use 'sdpa' or 'auto'"
            )
        return "fa4"
    if requested == "auto" and on_hopper and fa4_forward() is not None:
        return "fa4"
    return "sdpa"


def dense_attention(q_BNHD, k_BNHD, v_BNHD, backend: str = "auto") -> torch.Tensor:
    """Bidirectional attention over one sequence per sample -> ``[B, N, H, D]``."""
    if resolve_backend(backend, q_BNHD) == "fa4" and q_BNHD.dtype in (
        torch.bfloat16,
        torch.float16,
    ):
        out = fa4_forward()(q_BNHD, k_BNHD, v_BNHD, softmax_scale=q_BNHD.shape[-1] ** -0.5)
        return out[0] if isinstance(out, tuple) else out
    out_BHND = F.scaled_dot_product_attention(
        q_BNHD.transpose(1, 2), k_BNHD.transpose(1, 2), v_BNHD.transpose(1, 2)
    )
    return out_BHND.transpose(1, 2)


def masked_cross_attention(q_BNHD, k_BLHD, v_BLHD, mask_BL: torch.Tensor | None) -> torch.Tensor:
    """Queries attend to each sample's valid keys (``mask_BL`` True) -> ``[B, N, H, D]``.

    Masked keys get zero weight, so a padded batch gives exactly the per-sample result.
    """
    attn_mask = None if mask_BL is None else mask_BL[:, None, None, :].to(torch.bool)
    out_BHND = F.scaled_dot_product_attention(
        q_BNHD.transpose(1, 2), k_BLHD.transpose(1, 2), v_BLHD.transpose(1, 2), attn_mask=attn_mask
    )
    return out_BHND.transpose(1, 2)
