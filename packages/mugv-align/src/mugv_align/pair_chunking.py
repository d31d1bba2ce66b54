"""The preference loss of one micro-batch, whole or one sample at a time.

``align.pair_chunking`` chooses how a DPO pair (or a KTO micro-batch) goes through the model:

* ``joint``: one forward/backward of all its rows (DPO ``[w_1..w_B, l_1..l_B]``), the loss
  of :func:`preference_terms` differentiated through the batch.
* ``per_sample``: one row at a time. Flow-DPO couples the samples of a pair only through
  their scalar velocity errors: with ``L = sum_items f(e_w, e_l; e_w_ref, e_l_ref) / n
  + lambda * sse_w / N`` the gradient is ``sum_rows (dL/de_r) de_r/dtheta + lambda / N
  dsse_w/dtheta``. So the policy errors ``e_r`` are computed first without gradients (as the
  reference's are), the coefficients ``c_r = dL/de_r`` follow from those scalars
  (:func:`error_coefficients`), and each row then runs one forward/backward of
  ``c_r e_r (+ lambda sse_r / N on winners)`` (:func:`row_loss`): the same gradient as the
  joint loss with only one sample's activations alive, for one more no-grad forward. Flow-KTO
  has the same structure (its reference point ``z`` is detached), so it chunks the same way
  (and already runs that no-grad forward for ``z``).

The identity needs the no-grad forward to compute what the gradient forward computes: a
deterministic model (``lora.dropout`` 0, which the config enforces).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch

from mugv_align.data import PrefBatch
from mugv_align.losses import dpo_margin, flow_dpo_loss, flow_kto_loss, per_sample_velocity_error


class PreferenceTerms(NamedTuple):
    """The per-item preference loss of a micro-batch and what the metrics need."""

    pref: torch.Tensor  # [items], differentiable in e
    margin: torch.Tensor  # [items], detached: DPO reward margin / KTO +-(g - z)
    sft_rows: torch.Tensor  # [rows] bool: rows of the SFT regulariser (winners / desirable)


def preference_terms(e, e_ref, b: PrefBatch, kind: str, align, z) -> PreferenceTerms:
    """Flow-DPO (``kind == "dpo"``, rows ``[w.., l..]``) or Flow-KTO per-item losses of one
    micro-batch from the per-row errors ``e`` (policy) and ``e_ref`` (reference); ``align``
    is the run's AlignConfig, ``z`` the KTO reference point."""
    n = len(b.ids)
    if kind == "dpo":
        e_w, e_l = e[:n], e[n:]
        pref = flow_dpo_loss(e_w, e_l, e_ref[:n], e_ref[n:], align.beta, b.weight_B)
        margin = dpo_margin(e_w.detach(), e_l.detach(), e_ref[:n], e_ref[n:], align.beta)
        sft_rows = torch.arange(e.shape[0], device=e.device) < n
    else:
        pref = flow_kto_loss(
            e,
            e_ref,
            b.desirable_B,
            z,
            align.beta,
            desirable_weight=align.desirable_weight,
            undesirable_weight=align.undesirable_weight,
            weight=b.weight_B,
        )
        g = (e_ref - e.detach()) - z
        margin = torch.where(b.desirable_B, g, -g)  # signed by label
        sft_rows = b.desirable_B.to(e.device)
    return PreferenceTerms(pref, margin, sft_rows)


def error_coefficients(
    e: torch.Tensor, e_ref, b: PrefBatch, kind: str, align, z, total_items: float
) -> tuple[torch.Tensor, PreferenceTerms]:
    """``c_r = d(sum pref / total_items) / de_r`` for every row of the micro-batch, from the
    policy errors ``e`` computed without gradients; and the (detached) terms at ``e``."""
    leaf = e.detach().requires_grad_(True)
    with torch.enable_grad():
        terms = preference_terms(leaf, e_ref, b, kind, align, z)
        (coef,) = torch.autograd.grad(terms.pref.sum() / total_items, leaf)
    return coef, PreferenceTerms(terms.pref.detach(), terms.margin, terms.sft_rows)


def split_rows(b: PrefBatch) -> list[PrefBatch]:
    """The rows of a micro-batch as one-sample micro-batches (row ``r`` belongs to item
    ``r % items``: DPO rows are ``[w_1..w_B, l_1..l_B]``)."""
    rows = []
    n = len(b.ids)
    for r in range(b.noisy_BCTHW.shape[0]):
        i = r % n
        one = slice(r, r + 1)
        rows.append(
            dataclasses.replace(
                b,
                noisy_BCTHW=b.noisy_BCTHW[one],
                sigma_B=b.sigma_B[one],
                target_BCTHW=b.target_BCTHW[one],
                noisy_frames_BT=b.noisy_frames_BT[one],
                drop_caption_B=b.drop_caption_B[one],
                texts=[b.texts[r]],
                fps_B=b.fps_B[one],
                latent_shape=(1, *b.latent_shape[1:]),
                ids=[b.ids[i]],
                seeds=[b.seeds[i]],
                weight_B=b.weight_B[i : i + 1],
                desirable_B=b.desirable_B[i : i + 1],
            )
        )
    return rows


def row_loss(
    pred_BCTHW: torch.Tensor,
    row: PrefBatch,
    coef: torch.Tensor,
    sft: bool,
    sft_weight: float,
    total_sft: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The surrogate loss of one row, ``c e`` plus, on an SFT row, the regulariser
    ``sft_weight sse / total_sft`` (as ``sse = e * count``, its noisy elements), whose
    gradient is the row's share of the micro-batch's loss gradient; and the row's SFT
    squared-error sum (0 when not an SFT row), detached."""
    e = per_sample_velocity_error(pred_BCTHW, row.target_BCTHW, row.noisy_frames_BT)
    c, h, w = row.target_BCTHW.shape[1], row.target_BCTHW.shape[3], row.target_BCTHW.shape[4]
    count = row.noisy_frames_BT.sum().to(e.dtype) * (c * h * w)
    coef = coef.to(e.dtype)
    if sft:
        coef = coef + sft_weight * count / total_sft
    sse = e.detach().sum() * count if sft else torch.zeros((), dtype=e.dtype, device=e.device)
    return (coef * e).sum(), sse


def regroup(row_values: list, batches: list[PrefBatch]) -> list[torch.Tensor | None]:
    """Per-row ``[1]`` errors (in :func:`split_rows` order over ``batches``) back to one
    ``[rows]`` tensor per micro-batch (None on pipeline stages that hold no errors)."""
    out, k = [], 0
    for b in batches:
        n = b.noisy_BCTHW.shape[0]
        part = row_values[k : k + n]
        k += n
        out.append(None if not part or part[0] is None else torch.cat(part))
    return out
