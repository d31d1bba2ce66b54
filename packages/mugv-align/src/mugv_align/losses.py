"""Preference objectives for flow-matching DiTs as pure functions.

Notation: ``e`` is the velocity error of one sample, ``||v_pred - v_target||^2`` averaged
over the elements of its noisy frames (conditioning frames excluded). ``e_ref`` is the same
error of the frozen reference model on the same noisy input (same noise, noise level, task
and caption dropout).

* Flow-DPO (pairs w > l of one prompt, sharing noise and noise level):
  ``loss = -log sigmoid(-beta/2 * [(e_w - e_w_ref) - (e_l - e_l_ref)])`` with a constant
  ``beta`` (a timestep-dependent beta reward-hacks).
* Flow-KTO (single samples labelled desirable / undesirable):
  ``g = e_ref - e``, reference point ``z = max(0, mean over the global batch of g)``
  (detached), ``loss = w_y * (1 - sigmoid(+-beta * (g - z)))`` with ``+`` for desirable.

Batch losses are sums over samples; the caller divides by the global sample count so every
data-parallel / accumulation layout gives the same value and gradient.

Logged metrics (per step, means over the global batch; ``n`` items, ``N`` samples):

* ``pref_loss``: mean per-item loss above (weights applied);
* ``reward_margin``: DPO ``mean(dpo_margin)``; KTO ``mean(+-(g - z))``, signed by label;
* ``pref_accuracy``: share of items with a positive ``reward_margin`` term;
* ``mean_error_gap``: ``sum over samples (e - e_ref) / N``, how much worse (> 0) or better
  (< 0) the policy fits the flow target than the reference. Not a KL: it has either sign;
  0 at step 0 (policy == reference);
* ``sft_loss``: the flow loss of winners (DPO) / desirable samples (KTO), per element.

The log-sigmoid is evaluated as ``F.logsigmoid`` (``-softplus(-x)``), finite for any
finite margin (``log(sigmoid(x))`` is ``-inf`` once ``sigmoid(x)`` underflows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def per_sample_velocity_error(
    pred_BCTHW: torch.Tensor, target_BCTHW: torch.Tensor, noisy_frames_BT: torch.Tensor
) -> torch.Tensor:
    """``[B]`` mean squared velocity error over each sample's noisy frames (the
    learned-sigma half of the prediction is ignored), in fp32 (float64 for a float64
    prediction)."""
    c, h, w = target_BCTHW.shape[1], target_BCTHW.shape[3], target_BCTHW.shape[4]
    dtype = torch.promote_types(pred_BCTHW.dtype, torch.float32)
    err = (pred_BCTHW[:, :c].to(dtype) - target_BCTHW.to(dtype)).pow(2)
    mask = noisy_frames_BT[:, None, :, None, None].to(err.dtype)
    count = noisy_frames_BT.sum(dim=1).to(err.dtype).clamp_min(1) * (c * h * w)
    return (err * mask).flatten(1).sum(dim=1) / count


def dpo_margin(
    e_w: torch.Tensor, e_l: torch.Tensor, e_w_ref: torch.Tensor, e_l_ref: torch.Tensor, beta: float
) -> torch.Tensor:
    """Implicit reward margin ``-beta/2 * [(e_w - e_w_ref) - (e_l - e_l_ref)]`` per pair."""
    return -0.5 * beta * ((e_w - e_w_ref) - (e_l - e_l_ref))


def flow_dpo_loss(
    e_w: torch.Tensor,
    e_l: torch.Tensor,
    e_w_ref: torch.Tensor,
    e_l_ref: torch.Tensor,
    beta: float,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pair Flow-DPO loss ``-logsigmoid(margin)`` (times the pair's weight), margin
    from :func:`dpo_margin` with the reference errors detached."""
    loss = -F.logsigmoid(dpo_margin(e_w, e_l, e_w_ref.detach(), e_l_ref.detach(), beta))
    return loss if weight is None else loss * weight


def kto_reference_point(g_sum: torch.Tensor, count: float) -> torch.Tensor:
    """``z = max(0, sum(g) / count)``, detached; ``g_sum`` already reduced over DP ranks."""
    return (g_sum.detach() / max(count, 1.0)).clamp_min(0.0)


def flow_kto_loss(
    e: torch.Tensor,
    e_ref: torch.Tensor,
    desirable: torch.Tensor,
    z: torch.Tensor,
    beta: float,
    *,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample Flow-KTO loss ``w_y (1 - sigmoid(+-beta (g - z)))``, ``g = e_ref - e``,
    evaluated as ``w_y sigmoid(-+beta (g - z))`` (no cancellation in ``1 - sigmoid`` near
    1; no logarithm, so ``logsigmoid`` does not apply)."""
    g = e_ref.detach() - e
    sign = torch.where(desirable, 1.0, -1.0).to(g.dtype)
    w_y = torch.where(desirable, desirable_weight, undesirable_weight).to(g.dtype)
    loss = w_y * torch.sigmoid(-sign * beta * (g - z.detach()))
    return loss if weight is None else loss * weight
