"""The preference loss of one micro-batch, whole or one sample at a time.

``align.pair_chunking`` chooses how a DPO pair (or a KTO micro-batch) goes through the model:

* ``joint``: one forward/backward of all its rows (DPO ``[w_1..w_B, l_1..l_B]``), the loss
  of :func:`preference_terms` differentiated through the batch.
* ``per_sample``: one row at a time. Flow-DPO couples the samples of a pair only through
  their scalar velocity errors: with ``L = sum_items f(e_w, e_l; e_w_ref, e_l_ref) / n
  + lambda * sse_w / N`` the gradient is ``sum_rows (dL/de_r) de_r/dtheta + lambda / N
  dsse_w/dtheta``. Each row runs one forward/backward of ``c_r e_r (+ lambda sse_r / N on
  winners)`` (:class:`RowLosses`) with ``c_r = dL/de_r`` (:func:`error_coefficients`)
  computed at its turn from scalars: its own error from this very forward, and its partner's
  -- the winners go first, so a winner's loser comes from a no-grad policy forward run
  beforehand (:func:`policy_rows_needed`), and a loser's winner from the winner's own turn.
  The same gradient as the joint loss with only one sample's activations alive, for one
  more no-grad forward per pair (the losers'). Flow-KTO has the same structure (its
  reference point ``z`` is detached and already needs every sample's no-grad error).

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


def policy_rows_needed(b: PrefBatch, kind: str) -> list[int]:
    """Rows whose policy errors a per-sample pass needs before the rows' turns: DPO the
    losers (``[w.., l..]``: each winner's coefficient needs its loser's error); KTO every
    row (the reference point ``z``)."""
    rows = b.noisy_BCTHW.shape[0]
    return list(range(len(b.ids), rows)) if kind == "dpo" else list(range(rows))


class RowLosses:
    """The per-sample losses of one micro-batch, row by row in :func:`split_rows` order.

    ``e_known``: ``[rows]`` policy errors known beforehand (NaN where not, see
    :func:`policy_rows_needed`); each row's turn (:meth:`loss`) sets its own error from its
    gradient forward and takes its coefficient from the errors known then."""

    def __init__(self, e_known, e_ref, b: PrefBatch, kind: str, align, z, total_items: float):
        # unknown rows are placeholders (the reference's errors): a row's coefficient never
        # depends on another item's rows, and its own item's rows are known at its turn
        self.e = torch.where(torch.isnan(e_known), e_ref.to(e_known.dtype), e_known)
        self.e_ref, self.b, self.kind, self.align, self.z = e_ref, b, kind, align, z
        self.total_items = total_items
        self.sft_rows = preference_terms(self.e, e_ref, b, kind, align, z).sft_rows.tolist()

    def loss(
        self, r: int, pred_BCTHW, row: PrefBatch, total_sft: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Row ``r``'s surrogate loss (:func:`row_loss`) and its SFT squared-error sum."""
        e_r = per_sample_velocity_error(pred_BCTHW, row.target_BCTHW, row.noisy_frames_BT)
        self.e = self.e.clone()
        self.e[r] = e_r.detach()[0].to(self.e.dtype)
        coef, _ = error_coefficients(
            self.e, self.e_ref, self.b, self.kind, self.align, self.z, self.total_items
        )
        sft = bool(self.sft_rows[r])
        return row_loss(pred_BCTHW, row, coef[r : r + 1], sft, self.align.sft_weight, total_sft)

    def terms(self) -> PreferenceTerms:
        """The preference terms at the errors of the rows' own forwards (after all turns)."""
        return error_coefficients(
            self.e, self.e_ref, self.b, self.kind, self.align, self.z, self.total_items
        )[1]


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
