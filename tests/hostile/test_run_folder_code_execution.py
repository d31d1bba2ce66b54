"""Defect 1: a pickle planted in a DiT run folder is refused by name and never runs.

The default run checks each loader in-process on a checkpoint saved by the trainer's own
``save_checkpoint``; the ``slow`` tests repeat it end to end through ``mugv-dit train`` /
``mugv-dit export`` subprocesses."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from hostile_util import clean_env, cli, dit_config, make_latents, plant_pickle

pytest.importorskip("megatron.core")


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    """A debug MUGDiT + EMA + optimizer checkpoint written by ``save_checkpoint``."""
    import torch
    from mugv_dit.checkpoint import save_checkpoint
    from mugv_dit.config import model_preset
    from mugv_dit.megatron_patches.cuda_on_cpu import cpu_megatron
    from mugv_dit.model import MUGDiT, megatron_config

    cfg = model_preset("debug")
    with cpu_megatron():
        torch.manual_seed(0)
        model = MUGDiT(cfg, megatron_config(cfg))
        root = tmp_path_factory.mktemp("ckpt") / "checkpoints"
        save_checkpoint(root, 1, model, None, None, {"step": 1, "skipped": 0})
    return root / "step_0000001", cfg


def _load(ckpt, cfg):
    from mugv_dit.checkpoint import load_model_weights
    from mugv_dit.megatron_patches.cuda_on_cpu import cpu_megatron
    from mugv_dit.model import MUGDiT, megatron_config

    with cpu_megatron():
        load_model_weights(ckpt, MUGDiT(cfg, megatron_config(cfg)))


def test_checkpoint_loads_through_the_restricted_reader(saved_checkpoint):
    _load(*saved_checkpoint)


@pytest.mark.parametrize("member", [".metadata", "common.pt"])
def test_planted_checkpoint_pickle_is_refused(saved_checkpoint, tmp_path, member):
    from mugv_dit.checkpoint import UnsafeCheckpointError

    ckpt = tmp_path / "step"
    shutil.copytree(saved_checkpoint[0], ckpt)
    marker = tmp_path / "PWNED"
    plant_pickle(ckpt / member, marker)
    with pytest.raises(UnsafeCheckpointError, match=rf"{member}.*refused"):
        _load(ckpt, saved_checkpoint[1])
    assert not marker.exists(), "the planted pickle ran"


def test_planted_energon_state_pickle_is_refused(tmp_path):
    from mugv_dit.data.energon import load_plain_state

    marker = tmp_path / "PWNED"
    plant_pickle(tmp_path / "rank_00000.pt", marker)
    with pytest.raises(ValueError, match=r"rank_00000\.pt: energon loader state is not plain"):
        load_plain_state(tmp_path / "rank_00000.pt")
    assert not marker.exists(), "the planted pickle ran"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 2-step debug run with the energon loader, checkpoints at steps 1 and 2."""
    tmp = tmp_path_factory.mktemp("run")
    cfg = dit_config(tmp, make_latents(tmp / "latents"), "run")
    r = cli("mugv_dit.cli", "train", cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp / "run", cfg


def _copy(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


@pytest.mark.slow
def test_planted_metadata_pickle_is_refused_on_export(trained_run, tmp_path):
    run = _copy(trained_run[0], tmp_path)
    marker = tmp_path / "PWNED"
    plant_pickle(run / "checkpoints" / "step_0000002" / ".metadata", marker)
    r = cli("mugv_dit.cli", "export", "--run", run, "--output", tmp_path / "export")
    assert not marker.exists(), "the planted pickle ran"
    assert r.returncode == 2, r.stderr[-2000:]
    assert ".metadata" in r.stderr and "refused" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_unreadable_metadata_is_one_line_on_export(trained_run, tmp_path):
    run = _copy(trained_run[0], tmp_path)
    (run / "checkpoints" / "step_0000002" / ".metadata").write_bytes(b"\x00garbage")
    r = cli("mugv_dit.cli", "export", "--run", run, "--output", tmp_path / "export")
    assert r.returncode == 2 and ".metadata" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_planted_common_state_pickle_is_refused(trained_run, tmp_path):
    run = _copy(trained_run[0], tmp_path)
    marker = tmp_path / "PWNED"
    plant_pickle(run / "checkpoints" / "step_0000002" / "common.pt", marker)
    r = cli("mugv_dit.cli", "export", "--run", run, "--output", tmp_path / "export")
    assert not marker.exists(), "the planted pickle ran"
    assert r.returncode == 2 and "common.pt" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_planted_energon_state_pickle_is_refused_on_resume(trained_run, tmp_path):
    run = _copy(trained_run[0], tmp_path)
    marker = tmp_path / "PWNED"
    # resume from step 1 (the rest of the run is to do) with a planted loader state
    ckpts = run / "checkpoints"
    shutil.rmtree(ckpts / "step_0000002")
    (ckpts / "latest").write_text("step_0000001\n")
    plant_pickle(ckpts / "step_0000001" / "energon" / "rank_00000.pt", marker)
    cfg = trained_run[1]
    cmd = [sys.executable, "-m", "mugv_dit.cli", "train", str(cfg)]
    cmd += ["--set", f"output_dir={run}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=clean_env())
    assert not marker.exists(), "the planted pickle ran"
    assert r.returncode == 2, r.stderr[-2000:]
    assert "rank_00000.pt" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_clean_run_still_exports(trained_run, tmp_path):
    r = cli("mugv_dit.cli", "export", "--run", trained_run[0], "--output", tmp_path / "export")
    assert r.returncode == 0, r.stderr[-2000:]
