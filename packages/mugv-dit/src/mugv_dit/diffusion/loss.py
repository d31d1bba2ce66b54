"""Velocity MSE restricted to noisy frames.

The loss of a step is ``sum of squared errors over noisy elements / number of noisy
elements``, both summed over the whole global batch (all micro-batches of all DP ranks), so
any TP/DP/accumulation layout gives the same value and gradients.
"""

from __future__ import annotations

import torch


def noisy_element_count(noisy_frames_BT: torch.Tensor, elements_per_frame: int) -> int:
    """Number of target elements the loss covers in a micro-batch."""
    return int(noisy_frames_BT.sum()) * elements_per_frame


def masked_velocity_sse(
    pred_BCTHW: torch.Tensor, target_BCTHW: torch.Tensor, noisy_frames_BT: torch.Tensor
) -> torch.Tensor:
    """Sum (fp32) of squared velocity errors over noisy frames; extra predicted channels
    (learned-sigma half) are ignored."""
    c = target_BCTHW.shape[1]
    err = (pred_BCTHW[:, :c].float() - target_BCTHW.float()).pow(2)
    weight = noisy_frames_BT[:, None, :, None, None].to(err.dtype)
    return (err * weight).sum()


def step_loss(sse_sum: float, noisy_count: float) -> float:
    """The loss of a step: summed squared error over the number of noisy elements, both
    over the whole global batch (``noisy_count`` at least 1)."""
    return sse_sum / max(1.0, noisy_count)


def micro_batch_loss_scale(noisy_count: float, dp_size: int, micro_batches: int) -> float:
    """Factor on one micro-batch's summed squared error that makes the accumulated, reduced
    gradient that of :func:`step_loss`: Megatron's schedule divides each of this rank's
    ``micro_batches`` losses by their number (and multiplies by CP, which its DDP then
    averages away with the CP ranks) and DDP averages over the ``dp_size`` DP ranks."""
    return dp_size * micro_batches / max(1.0, noisy_count)
