"""The README's main job end to end: sample clips -> clip shards -> latent shards -> text
features -> DiT training -> DiT export, each stage reading only the previous stage's files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from mugv_formats import (
    DIT_EXPORT_FORMAT,
    VAE_CHECKPOINT_FORMAT,
    ClipDataset,
    LatentDataset,
    load_weights_folder,
)


def test_demo_runs_end_to_end(repo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    res = subprocess.run(
        [sys.executable, str(repo_root / "scripts" / "demo.py"), "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "end-to-end demo finished" in res.stdout

    clips = ClipDataset(out / "clips")
    records = clips.records()
    assert len(records) >= 2, "the demo config must keep several real clips"
    assert all({"sharpness", "motion"} <= set(r.scores) for r in records)
    assert all(Path(r.source).name.endswith(".mp4") for r in records)

    vae = load_weights_folder(out / "vae", format=VAE_CHECKPOINT_FORMAT)
    latents = LatentDataset(out / "latents")
    assert latents.header.vae_checkpoint_id and latents.header.latent_channels == 24
    samples = list(latents)
    assert {s.record.clip_key for s in samples} == {r.key for r in records}
    for s in samples:  # 17 frames at 64x64 -> 1 + 2 latents of 8x8
        assert s.latents.shape == (24, 3, 8, 8) and np.isfinite(s.latents).all()
    assert vae.config

    with_text = list(LatentDataset(out / "latents-text"))
    assert len(with_text) == len(samples)
    assert all(s.text is not None and s.text.shape[0] >= 1 for s in with_text)
    for a, b in zip(
        sorted(samples, key=lambda s: s.record.key), sorted(with_text, key=lambda s: s.record.key)
    ):
        np.testing.assert_array_equal(a.latents, b.latents)  # text stage leaves latents untouched

    export = load_weights_folder(out / "dit-export", format=DIT_EXPORT_FORMAT)
    assert export.num_parameters > 0
    assert all(np.isfinite(t.float().numpy()).all() for t in export.state_dict.values())
