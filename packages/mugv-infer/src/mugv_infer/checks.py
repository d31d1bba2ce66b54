"""Guards against non-finite numbers: weights at load, values handed to the pipeline, and the
latents / pixels of a running generation. A NaN or an infinity anywhere in generation gives an
all-black video (NaN casts to 0), so each is refused by name instead. Errors are
``ValueError`` on one line naming the file, the tensor or the value.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from pathlib import Path

import torch
from mugv_formats.weights import check_finite_state


class NonFiniteError(ValueError):
    """A tensor holds NaN or infinite values where only finite ones make sense."""


def _count_bad(t: torch.Tensor) -> tuple[int, int]:
    return int(torch.isnan(t).sum()), int(torch.isinf(t).sum())


def _weights_file(folder: Path, name: str) -> str:
    """The file of ``folder`` holding tensor ``name`` (from a safetensors index, or the one
    ``.safetensors`` file there), for error messages."""
    for index in sorted(folder.glob("*.safetensors.index.json")):
        try:
            weight_map = json.loads(index.read_text()).get("weight_map", {})
        except (OSError, ValueError, AttributeError):
            continue
        if name in weight_map:
            return str(folder / weight_map[name])
    files = sorted(folder.glob("*.safetensors"))
    return str(files[0]) if len(files) == 1 else f"{folder} (*.safetensors)"


def check_finite_weights(
    state: Mapping[str, torch.Tensor] | torch.nn.Module, folder: str | Path, what: str
) -> None:
    """Every floating-point tensor of ``state`` (a state dict or a module: parameters and
    buffers) is finite, else :class:`NonFiniteError` naming the folder's file and the tensor
    (the shared check, :func:`mugv_formats.weights.check_finite_state`)."""
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    folder = Path(folder)
    check_finite_state(
        state,
        where=f"{what} folder {folder}",
        file_of=lambda name: _weights_file(folder, name),
        error=NonFiniteError,
    )


def check_finite_tensor(t: torch.Tensor | None, name: str) -> None:
    """``t`` (an input tensor) holds only finite values."""
    if t is None or not isinstance(t, torch.Tensor) or not torch.is_floating_point(t):
        return
    if not bool(torch.isfinite(t).all()):
        nan, inf = _count_bad(t)
        raise NonFiniteError(f"{name} holds non-finite values ({nan} NaN, {inf} inf)")


def check_number(
    name: str,
    value,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    integer: bool = False,
    optional: bool = False,
) -> None:
    """``value`` is a finite real number (an int when ``integer``) in ``[low, high]``
    (``(low, high]`` when ``low_open``), else ValueError naming ``name`` and the value."""
    if value is None and optional:
        return
    kind = "an integer" if integer else "a finite number"
    ok_type = isinstance(value, numbers.Integral if integer else numbers.Real)
    if not ok_type or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        bound = f"> {low}" if low_open else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value!r}")


def check_finite_step(latents: torch.Tensor, step: int, steps: int, sigma: float) -> None:
    """The latents after denoising step ``step`` (1-based) of ``steps`` are finite."""
    if not bool(torch.isfinite(latents).all()):
        nan, inf = _count_bad(latents)
        raise NonFiniteError(
            f"non-finite latents after denoising step {step} of {steps} (noise level "
            f"{sigma:.4f}; {nan} NaN, {inf} inf): generation stopped (broken weights, an "
            "overflow in reduced precision, or non-finite inputs)"
        )
