"""Golden losses: a seeded tiny pre-training run on CPU reproduces the per-step loss and grad
norm committed in ``golden/losses.json`` within fp32 noise (different thread counts / BLAS
builds move them by ~1e-6).

Regenerate after a deliberate change of the numerics (and say why in the commit):

    uv run python packages/mugv-dit/tests/mugv_dit_golden.py --write
"""

from __future__ import annotations

import json

import pytest
from mugv_dit_golden import GOLDEN, KEYS, golden_losses

REL, ABS = 2e-5, 1e-5


def test_pretraining_losses_match_the_golden_file(megatron_single, tmp_path):
    golden = json.loads(GOLDEN.read_text())
    steps = golden_losses(tmp_path)
    assert len(steps) == len(golden["steps"]) == 6
    for i, (got, want) in enumerate(zip(steps, golden["steps"])):
        for key in KEYS:
            assert got[key] == pytest.approx(want[key], rel=REL, abs=ABS), (
                f"step {i} {key}: {got[key]!r} != golden {want[key]!r} "
                f"(regenerate: {golden['generated_by']})"
            )
