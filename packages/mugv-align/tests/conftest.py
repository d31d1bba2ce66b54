"""Shared fixtures of the mugv-align tests."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # helper modules named mugv_align_*
warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex.*")


@pytest.fixture(scope="session")
def megatron_single():
    """Megatron parallel_state for one process (TP=1, DP=1, gloo), kept for the session."""
    from mugv_dit.parallel import init_distributed

    init_distributed(1, backend="gloo")
    yield


@pytest.fixture(scope="session")
def task(megatron_single, tmp_path_factory):
    """The synthetic preference task (mugv_align_fixtures): train / held-out latents, an
    initial export, DPO and KTO preference sets; built once, shared by the test modules."""
    from mugv_align.prefs import make_prefs
    from mugv_align_fixtures import make_export, make_task_latents, write_labels

    tmp = tmp_path_factory.mktemp("task")
    make_task_latents(tmp / "train_lat", prompts=16, seed=0)
    make_task_latents(tmp / "held_lat", prompts=8, seed=1, start=100)
    make_export(tmp / "init", seed=0)
    out = {"root": tmp}
    for kind in ("dpo", "kto"):
        make_prefs(
            tmp / "train_lat",
            write_labels(tmp / f"{kind}.jsonl", range(16), kind),
            tmp / f"{kind}_train",
        )
        make_prefs(
            tmp / "held_lat",
            write_labels(tmp / f"{kind}_h.jsonl", range(100, 108), kind),
            tmp / f"{kind}_held",
        )
    return out
