"""Rectified-flow objective: schedule, shift, tasks, caption dropout, masked loss."""

from __future__ import annotations

import math
import random

import pytest
import torch
from mugv_dit.config import ObjectiveConfig
from mugv_dit.diffusion.loss import masked_velocity_sse
from mugv_dit.diffusion.prepare import CleanBatch, prepare_inputs
from mugv_dit.diffusion.schedule import (
    add_noise,
    resolution_shift_ratio,
    sample_logit_normal,
    shift_sigma,
    velocity_target,
)
from mugv_dit.diffusion.tasks import choose_task, frame_mask


def test_interpolation_and_target_recover_x0():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 2, 4, generator=g), torch.randn(3, 2, 4, generator=g)
    s = torch.tensor([0.0, 0.3, 1.0])
    xs = add_noise(x0, eps, s)
    torch.testing.assert_close(xs[0], x0[0])
    torch.testing.assert_close(xs[2], eps[2])
    torch.testing.assert_close(xs[1], 0.7 * x0[1] + 0.3 * eps[1])
    # x0 = x_s + s * v  and  eps = x_s - (1 - s) * v
    v = velocity_target(x0, eps)
    torch.testing.assert_close(xs + s[:, None, None] * v, x0)


def test_logit_normal_statistics():
    s = sample_logit_normal(200_000, mean=0.0, std=1.0, generator=torch.Generator().manual_seed(1))
    logit = torch.log(s / (1 - s))
    assert abs(logit.mean().item()) < 0.01
    assert abs(logit.std().item() - 1.0) < 0.01
    assert s.min() > 0 and s.max() < 1


def test_shift_ratio_and_monotone_shift():
    assert resolution_shift_ratio(512, 512, 1) == pytest.approx(1.0)
    r = resolution_shift_ratio(720, 1280, 14)
    assert r == pytest.approx(math.sqrt(720 * 1280 / 512**2) * math.sqrt(14))
    s = torch.linspace(0, 1, 11, dtype=torch.float64)
    torch.testing.assert_close(shift_sigma(s, 1.0), s)
    shifted = shift_sigma(s, r)
    assert shifted[0] == 0 and shifted[-1] == 1
    assert (shifted[1:-1] > s[1:-1]).all()  # larger / longer samples get noisier levels
    with pytest.raises(ValueError, match="H=0"):
        resolution_shift_ratio(0, 4, 1)


def test_tasks_and_frame_masks():
    rng = random.Random(0)
    assert choose_task(1, {"t2v": 1.0}, rng) == "t2i"
    counts = {"t2v": 0, "i2v": 0}
    for _ in range(4000):
        counts[choose_task(5, {"t2v": 3.0, "i2v": 1.0}, rng)] += 1
    assert 0.72 < counts["t2v"] / 4000 < 0.78
    assert frame_mask("t2v", 4, rng).all()
    assert frame_mask("i2v", 4, rng).tolist() == [False, True, True, True]
    for _ in range(50):
        m = frame_mask("continuation", 4, rng, continuation_max_frames=2)
        k = int((~m).sum())
        assert 1 <= k <= 2 and not m[:k].any() and m[k:].all()
    with pytest.raises(ValueError, match="unknown task 'x'"):
        frame_mask("x", 3, rng)


def test_prepare_inputs_keeps_condition_frames_clean_and_drops_captions():
    x0 = torch.randn(64, 4, 3, 2, 2)
    batch = CleanBatch(x0, [torch.randn(2, 8)] * 64, torch.full((64,), 24.0), 256, 256, ["k"] * 64)
    cfg = ObjectiveConfig(task_ratios={"i2v": 1.0}, caption_dropout=0.5)
    inp = prepare_inputs(batch, cfg, seed=7)
    assert inp.tasks == ["i2v"] * 64
    torch.testing.assert_close(inp.noisy_BCTHW[:, :, 0], x0[:, :, 0])
    assert not torch.allclose(inp.noisy_BCTHW[:, :, 1], x0[:, :, 1])
    assert 16 < int(inp.drop_caption_B.sum()) < 48  # dropout is actually applied
    again = prepare_inputs(batch, cfg, seed=7)
    torch.testing.assert_close(again.noisy_BCTHW, inp.noisy_BCTHW)
    none = prepare_inputs(batch, ObjectiveConfig(caption_dropout=0.0), seed=7)
    assert not none.drop_caption_B.any()


def test_masked_loss_ignores_clean_frames_and_sigma_half():
    pred = torch.randn(2, 8, 3, 2, 2)
    target = torch.randn(2, 4, 3, 2, 2)
    mask = torch.tensor([[False, True, True], [True, True, True]])
    sse = masked_velocity_sse(pred, target, mask)
    ref = sum(
        (pred[b, :4, t] - target[b, :, t]).pow(2).sum()
        for b in range(2)
        for t in range(3)
        if mask[b, t]
    )
    torch.testing.assert_close(sse, ref)
    pred2 = pred.clone()
    pred2[0, :, 0] += 100.0  # clean frame
    pred2[:, 4:] += 100.0  # learned-sigma half
    torch.testing.assert_close(masked_velocity_sse(pred2, target, mask), sse)


def test_step_loss_is_the_mean_over_noisy_elements():
    from mugv_dit.diffusion.loss import step_loss

    assert step_loss(10.0, 4.0) == 2.5
    assert step_loss(3.0, 0.0) == 3.0  # no noisy element: the sum itself (count floored at 1)


def test_micro_batch_scale_gives_the_gradient_of_the_global_mean():
    """2 DP ranks x 3 micro-batches: Megatron's schedule divides each micro-batch's loss by
    the rank's micro-batch count and DDP averages the ranks' gradients; with the scale the
    result is the gradient of sum(sse) / noisy_count."""
    from mugv_dit.diffusion.loss import micro_batch_loss_scale

    torch.manual_seed(0)
    w = torch.randn(5, dtype=torch.float64, requires_grad=True)
    xs = torch.randn(6, 5, dtype=torch.float64)
    count = 17.0
    want = torch.autograd.grad(sum((w * x).pow(2).sum() for x in xs) / count, w)[0]
    scale = micro_batch_loss_scale(count, dp_size=2, micro_batches=3)
    rank_grads = [
        torch.autograd.grad(
            sum((w * x).pow(2).sum() * scale / 3 for x in xs[r * 3 : r * 3 + 3]), w
        )[0]
        for r in range(2)
    ]
    torch.testing.assert_close((rank_grads[0] + rank_grads[1]) / 2, want, rtol=1e-12, atol=0)
