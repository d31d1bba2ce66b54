"""Choice between the Triton kernels and the PyTorch references."""

from __future__ import annotations

import functools
import importlib.util
import os

import torch


@functools.cache
def triton_available() -> bool:
    """True when the ``triton`` package can be imported."""
    return importlib.util.find_spec("triton") is not None


def interpreter_enabled() -> bool:
    """True when ``TRITON_INTERPRET=1`` (Triton then runs kernels on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def use_triton_for(use_triton: bool | None, x: torch.Tensor, op: str) -> bool:
    """Resolve a ``use_triton`` argument for input ``x``.

    ``None``: Triton on CUDA tensors when triton is importable, the reference otherwise.
    ``False``: always the reference. ``True``: Triton; on CPU tensors only under
    ``TRITON_INTERPRET=1`` (set before triton is first imported), else ``ValueError``.
    """
    if use_triton is None:
        return x.is_cuda and triton_available()
    if not use_triton:
        return False
    if not triton_available():
        raise ValueError(f"{op}: use_triton=True but triton is not installed")
    if x.is_cuda:
        return True
    if x.device.type == "cpu" and interpreter_enabled():
        return True
    raise ValueError(
        f"{op}: use_triton=True with a tensor on {x.device} needs a CUDA device, or "
        "TRITON_INTERPRET=1 set before triton is imported to interpret on CPU"
    )
