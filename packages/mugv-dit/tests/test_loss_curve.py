"""``benchmarks/loss_curve.py`` (issue 29 item 4): the before/after-defaults loss curves. The
comparisons against hand-computed values; ``-m slow``: the CPU dry run end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mugv_dit_fixtures import load_benchmark

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "loss_curve.py"


@pytest.fixture(scope="module")
def lc():
    return load_benchmark("loss_curve")


def test_comparisons_against_hand_computed_values(lc):
    want = [2.0] * 20 + [1.0] * 20 + [0.5] * 5
    got = list(want)
    got[0] = 2.002  # first step 1e-3 off
    got[25] = 1.1  # one step 10 % off, moves its 20-step window mean by 0.5 %
    c = lc.compare(got, want)
    assert c["first_step_rel"] == pytest.approx(1e-3)
    assert c["max_step_rel"] == pytest.approx(0.1) and c["max_step_rel_at"] == 25
    assert c["window_rel"] == pytest.approx([0.002 / 40, 0.1 / 20, 0.0])
    assert c["max_window_rel"] == pytest.approx(0.005)
    assert lc.verdict(c, None)  # within 1 %
    shifted = [x * 1.02 for x in want]  # the whole curve 2 % off: a different curve
    d = lc.compare(shifted, want)
    assert d["max_window_rel"] == pytest.approx(0.02) and not lc.verdict(d, None)
    # ... unless eager itself differs from run to run by more than half of that
    assert lc.verdict(d, {"max_window_rel": 0.011}) and not lc.verdict(d, {"max_window_rel": 0.009})
    assert lc.compare(want, want)["max_step_rel"] == 0.0
    with pytest.raises(ValueError, match="45 and 44"):
        lc.compare(want, want[:-1])


def test_arms_differ_only_in_the_two_defaults(lc):
    eager = {"train": {"cuda_graph": False}, "runtime": {"fused_ln_linear": "off"}}
    assert lc.arm_settings("eager", False) == eager == lc.arm_settings("eager-repeat", False)
    assert lc.arm_settings("defaults", False) == {}  # whatever the defaults are today
    assert lc.arm_settings("defaults", True) == {
        "train": {"cuda_graph": True},
        "runtime": {"fused_ln_linear": "on"},
    }
    base = lc.shared_config(Path("d"), Path("o"), 200, tiny=False)
    assert base["runtime"] == {"fused_ops": True} and base["curriculum"][0]["steps"] == 200
    merged = lc.merge(base, eager)
    assert merged["runtime"] == {"fused_ops": True, "fused_ln_linear": "off"}
    assert merged["train"]["cuda_graph"] is False and merged["train"]["seed"] == 42


@pytest.mark.slow
def test_cpu_dry_run_writes_both_curves(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"RANK", "WORLD_SIZE", "LOCAL_RANK"}}
    cmd = [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--tiny", "--device", "cpu"]
    res = subprocess.run([*cmd, "--steps", "4", "--no-repeat"], env=env, capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    result = json.loads((tmp_path / "loss_curve.json").read_text())
    eager, defaults = result["arms"]["eager"], result["arms"]["defaults"]
    assert len(eager["loss"]) == len(defaults["loss"]) == 4
    assert eager["ln_linear_calls"] == 0 and eager["graphs"] is None
    assert defaults["ln_linear_calls"] > 0  # the LayerNorm went through mugv_kernels.ln_linear
    assert defaults["graphs"]["replays"] >= 1 and defaults["graphs"]["failure"] is None
    c = result["comparisons"]["defaults"]
    assert c["max_step_rel"] == max(
        abs(a - b) / abs(b) for a, b in zip(defaults["loss"], eager["loss"])
    )
    assert "MATCH" in res.stdout or "DIFFER" in res.stdout
    rows = (tmp_path / "loss_curve.md").read_text().splitlines()
    assert sum(r.startswith("| defaults |") for r in rows) == 2  # settings + comparison rows
