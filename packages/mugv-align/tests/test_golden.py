"""Golden losses: a seeded tiny DPO run and a seeded tiny KTO run on CPU reproduce the per-step
values committed in ``golden/losses.json`` within fp32 noise (different thread counts / BLAS
builds move them by ~1e-6).

Regenerate after a deliberate change of the numerics (and say why in the commit):

    uv run python packages/mugv-align/tests/mugv_align_golden.py --write
"""

from __future__ import annotations

import json

import pytest
from mugv_align_golden import GOLDEN, KEYS, golden_losses

REL, ABS = 2e-5, 1e-5


def test_dpo_and_kto_losses_match_the_golden_file(megatron_single, tmp_path):
    golden = json.loads(GOLDEN.read_text())
    runs = golden_losses(tmp_path)
    assert set(runs) == set(golden["runs"]) == {"dpo", "kto"}
    for kind, steps in golden["runs"].items():
        assert len(runs[kind]) == len(steps) == golden["steps"]
        for i, (got, want) in enumerate(zip(runs[kind], steps)):
            for key in (*KEYS, "grad_norm"):
                assert got[key] == pytest.approx(want[key], rel=REL, abs=ABS), (
                    f"{kind} step {i} {key}: {got[key]!r} != golden {want[key]!r} "
                    f"(regenerate: {golden['generated_by']})"
                )
