"""Multi-process runs on CPU (gloo) through torchrun: DDP and FSDP2 training, encode ranks.

Slow (process start-up and imports per rank); run with ``pytest -m slow``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

TINY_CPU_YAML = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"


def _torchrun(*args: str) -> list[dict]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "-m",
        "mugv_vae.cli",
        *args,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("parallel", ["ddp", "fsdp2"])
def test_two_rank_training_matches_across_layouts_and_resumes(tmp_path, clip_dir, parallel):
    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(clip_dir / "carphone_pristine.mp4", clips)
    base = [
        "train",
        str(TINY_CPU_YAML),
        "-o",
        f"output={tmp_path}/run",
        "-o",
        f"data.clips={clips}",
        "-o",
        "data.resolution=32x32",
        "-o",
        f"parallel={parallel}",
        "-o",
        "steps=2",
        "-o",
        "checkpoint_every=1",
    ]
    first = _torchrun(*base)
    assert len(first) == 2 and first[0]["last"]["grad_norm"] == pytest.approx(
        first[1]["last"]["grad_norm"]
    )
    resumed = _torchrun(*base[:-4], "-o", "steps=3", "-o", "checkpoint_every=1")
    assert all(r["resumed_from"] == 2 and r["steps"] == 3 for r in resumed)
    state = torch.load(tmp_path / "run/checkpoints/step-0000003/trainer.pt", weights_only=True)
    assert state["step"] == 3 and not any(hasattr(v, "placements") for v in state["model"].values())


def test_two_rank_encode_takes_whole_shards(tmp_path, tiny_checkpoint, clip_dataset):
    import mugv_formats as mf

    out = tmp_path / "latents"
    _torchrun(
        "encode",
        "--checkpoint",
        str(tiny_checkpoint),
        "--input",
        str(clip_dataset),
        "--output",
        str(out),
        "--resolution",
        "32x32",
        "--frames",
        "9",
        "--device",
        "cpu",
    )
    ds = mf.LatentDataset(out)
    assert sorted(r.key for r in ds.records()) == ["bigbuckbunny", "bikes", "carphone_pristine"]
