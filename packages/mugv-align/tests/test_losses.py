"""Flow-DPO / Flow-KTO losses against float64 references written from the formulas."""

from __future__ import annotations

import math

import pytest
import torch
from mugv_align.losses import (
    dpo_margin,
    flow_dpo_loss,
    flow_kto_loss,
    kto_reference_point,
    per_sample_velocity_error,
)


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_per_sample_error_is_mean_over_noisy_elements():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 6, 3, 2, 2, generator=g, dtype=torch.float64)  # learned sigma: 2x3
    target = torch.randn(2, 3, 3, 2, 2, generator=g, dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [False, True, True]])
    e = per_sample_velocity_error(pred, target, mask)
    for b in range(2):
        vals = [
            (pred[b, c, t, i, j].item() - target[b, c, t, i, j].item()) ** 2
            for c in range(3)
            for t in range(3)
            for i in range(2)
            for j in range(2)
            if mask[b, t]
        ]
        assert e[b].item() == pytest.approx(sum(vals) / len(vals), rel=1e-6)


def test_dpo_loss_matches_formula_and_sign():
    e_w = torch.tensor([0.5, 1.2, 0.9], dtype=torch.float64)
    e_l = torch.tensor([0.7, 1.0, 0.9], dtype=torch.float64)
    e_w_ref = torch.tensor([0.6, 1.1, 1.0], dtype=torch.float64)
    e_l_ref = torch.tensor([0.6, 1.3, 0.8], dtype=torch.float64)
    beta = 3.0
    got = flow_dpo_loss(e_w, e_l, e_w_ref, e_l_ref, beta)
    for i in range(3):
        x = -beta / 2 * ((e_w[i] - e_w_ref[i]) - (e_l[i] - e_l_ref[i])).item()
        assert got[i].item() == pytest.approx(-math.log(_sig(x)), rel=1e-12)
    # lowering the winner's error lowers the loss; lowering the loser's raises it
    assert (flow_dpo_loss(e_w - 0.1, e_l, e_w_ref, e_l_ref, beta) < got).all()
    assert (flow_dpo_loss(e_w, e_l - 0.1, e_w_ref, e_l_ref, beta) > got).all()
    # equal policy and reference: log 2
    assert flow_dpo_loss(e_w, e_l, e_w, e_l, beta) == pytest.approx(math.log(2))
    assert dpo_margin(e_w, e_l, e_w_ref, e_l_ref, beta)[0].item() == pytest.approx(
        -1.5 * ((0.5 - 0.6) - (0.7 - 0.6))
    )


def test_no_gradient_reaches_the_reference():
    e_w = torch.tensor([0.5], requires_grad=True)
    e_l = torch.tensor([0.7], requires_grad=True)
    refs = [torch.tensor([0.6], requires_grad=True), torch.tensor([0.6], requires_grad=True)]
    flow_dpo_loss(e_w, e_l, *refs, 2.0).sum().backward()
    assert all(r.grad is None for r in refs)
    assert e_w.grad.item() > 0 and e_l.grad.item() < 0  # descent lowers e_w, raises e_l
    e = torch.tensor([0.5, 0.4], requires_grad=True)
    e_ref = torch.tensor([0.6, 0.3], requires_grad=True)
    z = kto_reference_point((e_ref - e).sum(), 2)
    flow_kto_loss(e, e_ref, torch.tensor([True, False]), z, 2.0).sum().backward()
    assert e_ref.grad is None


def _kto_ref(e, e_ref, des, beta, wd, wu):
    g = [r - p for p, r in zip(e, e_ref, strict=True)]
    z = max(0.0, sum(g) / len(g))
    return [
        (wd if d else wu) * (1 - _sig((1 if d else -1) * beta * (gi - z)))
        for gi, d in zip(g, des, strict=True)
    ], z


@pytest.mark.parametrize(
    "des", [[True, False, True, False], [True] * 4, [False] * 4], ids=["mixed", "good", "bad"]
)
def test_kto_loss_matches_formula(des):
    e = [0.5, 0.9, 0.3, 1.1]
    e_ref = [0.6, 0.7, 0.45, 1.0]
    beta, wd, wu = 4.0, 1.0, 1.5
    want, z_want = _kto_ref(e, e_ref, des, beta, wd, wu)
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    z = kto_reference_point((t(e_ref) - t(e)).sum(), len(e))
    assert z.item() == pytest.approx(z_want, abs=1e-15)
    got = flow_kto_loss(
        t(e), t(e_ref), torch.tensor(des), z, beta, desirable_weight=wd, undesirable_weight=wu
    )
    for a, b in zip(got.tolist(), want, strict=True):
        assert a == pytest.approx(b, rel=1e-12)


def test_kto_reference_point_is_clamped_at_zero():
    assert kto_reference_point(torch.tensor(-3.0), 4).item() == 0.0
    assert kto_reference_point(torch.tensor(2.0), 4).item() == 0.5


@pytest.mark.parametrize("margin", [-1e4, -800.0, -50.0, 0.0, 50.0, 800.0, 1e4])
def test_losses_stay_finite_at_large_margins_float64(margin):
    """Flow-DPO is -logsigmoid(margin): finite with a finite gradient for any finite margin
    (log(sigmoid(x)) is -inf below x ~ -745 in float64, where exp(-x) overflows); Flow-KTO's
    1 - sigmoid(.) is finite too. Against closed forms: -logsigmoid(x) = log1p(exp(-x)) for
    x >= 0 and -x + log1p(exp(x)) for x < 0; d/dx = -sigmoid(-x)."""
    beta = 2.0
    # margin = -beta/2 * (e_w - e_w_ref): put the whole margin on the winner's error
    e_w = torch.tensor([-margin / (beta / 2)], dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(1, dtype=torch.float64)
    loss = flow_dpo_loss(e_w, zero, zero, zero, beta)
    assert dpo_margin(e_w, zero, zero, zero, beta).item() == pytest.approx(margin)
    x = margin
    want = math.log1p(math.exp(-x)) if x >= 0 else -x + math.log1p(math.exp(x))
    assert torch.isfinite(loss).all()
    assert loss.item() == pytest.approx(want, rel=1e-12, abs=1e-300)
    (grad,) = torch.autograd.grad(loss.sum(), e_w)
    # dloss/de_w = -sigmoid(-x) * dx/de_w = -sigmoid(-x) * (-beta/2)
    assert torch.isfinite(grad).all()
    want_grad = (beta / 2) * (1.0 / (1.0 + math.exp(x)) if x < 700 else math.exp(-x))
    assert grad.item() == pytest.approx(want_grad, rel=1e-9, abs=1e-300)
    # KTO at the same scale: w (1 - sigmoid(beta (g - z))) for a desirable sample
    e = torch.tensor([-margin / beta], dtype=torch.float64, requires_grad=True)
    k = flow_kto_loss(e, zero, torch.tensor([True]), torch.zeros(()), beta)
    assert torch.isfinite(k).all()
    s = x  # beta * (g - z) with g = -e
    assert k.item() == pytest.approx(1.0 / (1.0 + math.exp(s)) if s < 700 else 0.0, abs=1e-300)
    (kg,) = torch.autograd.grad(k.sum(), e)
    assert torch.isfinite(kg).all()


def test_dpo_loss_is_logsigmoid_not_log_of_sigmoid(monkeypatch):
    """The loss goes through F.logsigmoid: the straightforward log(sigmoid(x)) is -inf (loss
    +inf, gradient nan) at margin -800 in float64, which the test above would catch."""
    import torch.nn.functional as F

    calls = []
    real = F.logsigmoid
    monkeypatch.setattr(F, "logsigmoid", lambda x: calls.append(1) or real(x))
    zero = torch.zeros(1, dtype=torch.float64)
    flow_dpo_loss(torch.ones(1, dtype=torch.float64), zero, zero, zero, 1.0)
    assert calls
    naive = -torch.log(torch.sigmoid(torch.tensor([-800.0], dtype=torch.float64)))
    assert torch.isinf(naive).all()  # the failure mode the formula avoids
