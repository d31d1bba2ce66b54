"""Power-function EMA (EDM2) and its post-hoc reconstruction, against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mugv_align.ema import (
    discrete_profile,
    gamma_to_sigma_rel,
    power_beta,
    profile_inner,
    sigma_rel_to_gamma,
    solve_weights,
)


@pytest.mark.parametrize("sigma_rel", [0.01, 0.05, 0.10, 0.2])
def test_gamma_roundtrip(sigma_rel):
    g = sigma_rel_to_gamma(sigma_rel)
    assert gamma_to_sigma_rel(g) == pytest.approx(sigma_rel, rel=1e-10)
    assert g > 0


def test_ema_recursion_equals_power_average_of_the_trajectory():
    """ema_t from beta_t = (1-1/t)^(gamma+1) equals sum_tau w_tau theta_tau with the discrete
    power profile, computed in float64 from the actual trajectory."""
    rng = np.random.default_rng(0)
    theta = rng.standard_normal((50, 3))
    gamma = sigma_rel_to_gamma(0.1)
    ema = np.zeros(3)
    for t in range(1, 51):
        b = power_beta(t, gamma)
        ema = b * ema + (1 - b) * theta[t - 1]
        w = discrete_profile(t, gamma)
        assert w.sum() == pytest.approx(1.0)
        np.testing.assert_allclose(ema, w @ theta[:t], rtol=1e-10, atol=1e-12)


def test_closed_form_inner_product_matches_quadrature():
    ta, ga, tb, gb = 70.0, 6.9, 100.0, 16.9
    s = np.linspace(0, ta, 2_000_001)  # p_a vanishes past t_a
    pa = (ga + 1) * s**ga / ta ** (ga + 1)
    pb = (gb + 1) * s**gb / tb ** (gb + 1)
    want = np.trapezoid(pa * pb, s)
    assert profile_inner(ta, ga, tb, gb) == pytest.approx(want, rel=1e-8)


def test_reconstructing_a_stored_profile_returns_it():
    ts = [100, 200, 300, 400] * 2
    gs = [sigma_rel_to_gamma(0.05)] * 4 + [sigma_rel_to_gamma(0.10)] * 4
    w = solve_weights(ts, gs, 300, gs[6])
    np.testing.assert_allclose(w, np.eye(8)[6], atol=1e-6)


def test_reconstruction_approximates_the_true_ema_of_a_trajectory():
    """Snapshots of two EMAs of a smooth noisy trajectory; the reconstruction of a third
    sigma_rel is close to that EMA computed by brute force on the trajectory."""
    rng = np.random.default_rng(1)
    steps = 400
    tt = np.arange(1, steps + 1)
    theta = np.stack([np.sin(tt / 60.0), np.exp(-tt / 150.0)], 1) + 0.05 * rng.standard_normal(
        (steps, 2)
    )
    g1, g2 = sigma_rel_to_gamma(0.05), sigma_rel_to_gamma(0.10)
    snaps, ts, gs = [], [], []
    for t in range(40, steps + 1, 40):
        for g in (g1, g2):
            snaps.append(discrete_profile(t, g) @ theta[:t])
            ts.append(t)
            gs.append(g)
    g_target = sigma_rel_to_gamma(0.075)
    w = solve_weights(ts, gs, steps, g_target)
    assert w.sum() == pytest.approx(1.0)
    recon = w @ np.stack(snaps)
    truth = discrete_profile(steps, g_target) @ theta
    baseline = np.abs(snaps[-1] - truth).max()  # nearest stored EMA (sigma_rel 0.10)
    err = np.abs(recon - truth).max()
    assert err < 0.2 * baseline, (err, baseline)
    assert err < 5e-3


def test_streamed_average_equals_brute_force(tmp_path):
    """weighted_average over safetensors snapshot files (two TP shards) equals the float64
    sum of the full tensors with the same weights."""
    import json

    from mugv_align.snapshots import list_snapshots, reconstruction_weights, weighted_average
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    full = []
    root = tmp_path / "ema_snapshots"
    for step in (10, 20, 30):
        info = {"step": step, "emas": []}
        for s in (0.05, 0.10):
            w_full = torch.randn(4, 6, generator=g)
            b_full = torch.randn(6, generator=g)
            full.append({"w": w_full, "b": b_full})
            d = root / f"step_{step:07d}" / f"sigma_{s:.4f}"
            d.mkdir(parents=True)
            for r in range(2):
                save_file(
                    {"w": w_full.chunk(2, 0)[r].contiguous(), "b": b_full},
                    str(d / f"tp{r:02d}_pp00.safetensors"),
                    metadata={"partition_dims": json.dumps({"w": 0, "b": -1})},
                )
            info["emas"].append(
                {"sigma_rel": s, "gamma": sigma_rel_to_gamma(s), "dir": f"sigma_{s:.4f}"}
            )
        (root / f"step_{step:07d}" / "snapshot.json").write_text(json.dumps(info))
    snaps = list_snapshots(root)
    assert [(s["step"], s["sigma_rel"]) for s in snaps] == [
        (t, s) for t in (10, 20, 30) for s in (0.05, 0.10)
    ]
    w = reconstruction_weights(snaps, 0.07)
    got = weighted_average(snaps, w)
    for name in ("w", "b"):
        want = sum(float(wi) * f[name].double() for wi, f in zip(w, full, strict=True))
        torch.testing.assert_close(got[name].double(), want, rtol=1e-6, atol=1e-6)
