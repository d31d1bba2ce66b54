"""The issue-27 benchmark parts on the CPU at a debug size (slow): the per-step table with
fp8 and the graphed stack, the final-latent deviation, the low-memory run and the cache
curve all finish and write the fields the GPU run's summary reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "bench_generate.py"
SMALL = ["--device", "cpu", "--preset", "debug", "--height", "32", "--width", "48", "--frames", "9"]


def _bench(tmp_path, *args) -> dict:
    out = tmp_path / "b.json"
    cmd = [sys.executable, str(SCRIPT), *args, *SMALL, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_fast_part_on_cpu(tmp_path):
    res = _bench(
        tmp_path, "--steps", "1", "--fp8", "--graphed", "--latent-steps", "3",
        "--latent-size", "9x32x32",
    )  # fmt: skip
    rows = res["dit"]["variants"]
    assert set(rows) == {"reference", "ours", "ours fp8", "ours fp8 + graph"}
    assert all("s_per_cfg_step" in r for r in rows.values()), rows
    assert rows["ours fp8 + graph"]["graph"] == "replayed"
    # the graphed stack replays the same fp8 blocks: the same velocity
    fp8, graph = rows["ours fp8"], rows["ours fp8 + graph"]
    assert graph["velocity_rel_l2_vs_ours"] == pytest.approx(fp8["velocity_rel_l2_vs_ours"])
    assert 0 < fp8["velocity_rel_l2_vs_ours"] < 0.05
    assert res["fp8"]["backend"] == "emulated" and res["fp8"]["quantized"] > 0
    assert 0 < res["latent"]["final_latent_rel_l2_fp8_vs_bf16"] < 0.05


@pytest.mark.slow
def test_lowmem_and_curve_parts_on_cpu(tmp_path):
    low = _bench(tmp_path, "--steps", "0", "--e2e-steps", "2", "--low-memory")
    assert low["e2e"]["ours"]["total_s"] > 0 and low["fp8"]["quantized"] > 0
    curve = _bench(
        tmp_path, "--steps", "0", "--fp8", "--cache-curve", "0.05,100", "--cache-prompts", "2",
        "--cache-steps", "3",
    )  # fmt: skip
    cal = curve["e2e"]["cache_calibration"]
    assert [p["threshold"] for p in cal["curve"]] == [0.05, 100.0]
    assert cal["curve"][1]["skipped_steps"] == [2, 2]  # all but the first step
    assert cal["threshold"] in (0.0, 0.05, 100.0)
