"""Shape checks and flattening shared by the modulated-norm kernels.

Legend for tensor names: ``N`` = product of the leading (batch-like) dims, ``L`` = tokens,
``D`` = hidden size, ``R`` = ``N * L`` rows. A *modulation* tensor (shift, scale, gate) comes in
one of three layouts, decided from its shape and from whether a token-branch mask is given:

* ``"sample"``: ``[..., D]`` (or ``[..., 1, D]``), one vector per sample broadcast over ``L``;
* ``"token"``: ``[..., L, D]``, one vector per token;
* ``"branch"``: ``[..., 2, D]`` with a ``[..., L]`` bool mask; each token takes branch 0 (the
  noisy-frame modulation) or branch 1 (the ``t=0`` modulation of conditioning frames).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

Layout = Literal["sample", "token", "branch"]


@dataclass(frozen=True)
class Problem:
    """Flattened geometry of one modulated-norm call."""

    lead: tuple[int, ...]
    n: int
    seq_len: int
    hidden: int
    layout: Layout


def check_activation(x: torch.Tensor, name: str = "x") -> tuple[tuple[int, ...], int, int]:
    """Return ``(lead, L, D)`` of an activation ``[..., L, D]`` or raise ``ValueError``."""
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape [..., L, D], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return tuple(x.shape[:-2]), x.shape[-2], x.shape[-1]


def modulation_layout(
    x: torch.Tensor, mod: torch.Tensor, name: str, token_branch: torch.Tensor | None
) -> Layout:
    """Decide the layout of modulation tensor ``mod`` for activation ``x`` (see module doc)."""
    lead, seq_len, hidden = check_activation(x)
    shape = tuple(mod.shape)
    if mod.ndim == 0 or shape[-1] != hidden:
        raise ValueError(f"{name} must end in the hidden size {hidden}, got shape {shape}")
    if token_branch is not None:
        if mod.ndim != x.ndim or shape[-2] != 2:
            raise ValueError(
                f"with token_branch, {name} must have shape [..., 2, {hidden}] "
                f"(branch 0 = noisy, branch 1 = t=0), got {shape}"
            )
        _check_broadcast(shape[:-2], lead, name)
        return "branch"
    if mod.ndim == x.ndim - 1:
        _check_broadcast(shape[:-1], lead, name)
        return "sample"
    if mod.ndim == x.ndim and shape[-2] == 1:
        _check_broadcast(shape[:-2], lead, name)
        return "sample"
    if mod.ndim == x.ndim and shape[-2] == seq_len:
        _check_broadcast(shape[:-2], lead, name)
        return "token"
    raise ValueError(
        f"{name} of shape {shape} fits none of the layouts for x of shape {tuple(x.shape)}: "
        f"per sample [..., {hidden}], per token [..., {seq_len}, {hidden}], "
        f"or per branch [..., 2, {hidden}] with token_branch"
    )


def _check_broadcast(mod_lead: tuple[int, ...], lead: tuple[int, ...], name: str) -> None:
    try:
        out = torch.broadcast_shapes(mod_lead, lead)
    except RuntimeError as err:
        raise ValueError(
            f"leading dims {mod_lead} of {name} do not broadcast to x's {lead}"
        ) from err
    if tuple(out) != tuple(lead):
        raise ValueError(f"leading dims {mod_lead} of {name} do not broadcast to x's {lead}")


def check_token_branch(x: torch.Tensor, token_branch: torch.Tensor) -> None:
    """``token_branch`` must be a bool mask broadcastable to ``x.shape[:-1]``."""
    if token_branch.dtype != torch.bool:
        raise ValueError(f"token_branch must be a bool tensor, got dtype {token_branch.dtype}")
    _check_broadcast(tuple(token_branch.shape), tuple(x.shape[:-1]), "token_branch")


def layouts_agree(layouts: dict[str, Layout]) -> Layout:
    """All modulation tensors of one call must share one layout."""
    values = set(layouts.values())
    if len(values) != 1:
        raise ValueError(f"modulation tensors must share one layout, got {layouts}")
    return values.pop()


def expand_modulation(mod: torch.Tensor, x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Broadcast ``mod`` to the modulation of each token: returns ``[..., L, D]`` (a view)."""
    if layout == "sample":
        if mod.ndim == x.ndim - 1:
            mod = mod.unsqueeze(-2)
        return mod.expand(x.shape)
    if layout == "token":
        return mod.expand(x.shape)
    raise AssertionError("branch layout is expanded with the mask, see select_branch")


def flatten_modulation(mod: torch.Tensor, x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Kernel view of a modulation tensor.

    ``sample`` -> ``[N, D]``; ``token`` -> ``[N, L, D]``; ``branch`` -> ``[N, 2, D]``. Leading dims
    are broadcast to x's; a copy is made only when the dims cannot be merged as a view.
    """
    lead, seq_len, hidden = check_activation(x)
    n = math.prod(lead)
    if layout == "sample":
        if mod.ndim == x.ndim:
            mod = mod.squeeze(-2)
        return mod.expand(*lead, hidden).reshape(n, hidden)
    if layout == "token":
        return mod.expand(*lead, seq_len, hidden).reshape(n, seq_len, hidden)
    return mod.expand(*lead, 2, hidden).reshape(n, 2, hidden)


def flatten_activation(x: torch.Tensor) -> torch.Tensor:
    """``[..., L, D]`` -> ``[N, L, D]`` (a view when the leading dims merge)."""
    lead, seq_len, hidden = check_activation(x)
    return x.reshape(math.prod(lead), seq_len, hidden)


def reduce_to_shape(grad: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Sum a broadcast gradient back to ``shape`` (inverse of ``expand``)."""
    shape = tuple(shape)
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(dim=tuple(range(extra)))
    dims = tuple(i for i, size in enumerate(shape) if size == 1 and grad.shape[i] != 1)
    if dims:
        grad = grad.sum(dim=dims, keepdim=True)
    return grad.reshape(shape)
