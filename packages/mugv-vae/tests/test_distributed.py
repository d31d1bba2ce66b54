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
    state = torch.load(tmp_path / "run/checkpoints/step_0000003/trainer.pt", weights_only=True)
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


def _tensors_equal(a, b, path="") -> list[str]:
    """Paths where two nested checkpoint structures differ (tensors compared bitwise)."""
    if isinstance(a, torch.Tensor):
        same = isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
        return [] if same else [path]
    if isinstance(a, dict):
        if not isinstance(b, dict) or set(a) != set(b):
            return [path + " (keys)"]
        return [p for k in a for p in _tensors_equal(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [path + " (len)"]
        return [
            p for i, (x, y) in enumerate(zip(a, b)) for p in _tensors_equal(x, y, f"{path}/{i}")
        ]
    return [] if a == b else [path]


def test_fsdp2_resume_is_bit_exact(tmp_path, clip_dir):
    """4 steps straight vs 2 steps, save, resume, 2 more: the same model, EMA, optimizer and
    discriminator state, bit for bit (the GAN stage starts at step 2 in tiny_cpu.yaml)."""
    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(clip_dir / "carphone_pristine.mp4", clips)

    def run(out: str, steps: int) -> None:
        _torchrun(
            "train",
            str(TINY_CPU_YAML),
            "-o",
            f"output={tmp_path}/{out}",
            "-o",
            f"data.clips={clips}",
            "-o",
            "data.resolution=32x32",
            "-o",
            "parallel=fsdp2",
            "-o",
            f"steps={steps}",
            "-o",
            "checkpoint_every=2",
        )

    run("straight", 4)
    run("resumed", 2)
    run("resumed", 4)
    a, b = (
        torch.load(tmp_path / f"{name}/checkpoints/step_0000004/trainer.pt", weights_only=True)
        for name in ("straight", "resumed")
    )
    a.pop("config"), b.pop("config")
    assert a["step"] == b["step"] == 4
    assert _tensors_equal(a, b) == []
