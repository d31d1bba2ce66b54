"""Encode stage on the real sample clips: clip shards -> latent shards, resume, errors."""

from __future__ import annotations

import json

import mugv_formats as mf
import numpy as np
import pytest
import torch
from mugv_vae.checkpoint import checkpoint_id
from mugv_vae.cli import main
from mugv_vae.model import MUGVAE
from mugv_vae.video import load_clip


@pytest.mark.parametrize(
    "extra", [[], ["--fast", "--max-activation-bytes", "1"]], ids=["default", "budget"]
)
def test_encode_writes_normalised_latents_with_header(
    tiny_checkpoint, clip_dataset, tmp_path, extra
):
    out = tmp_path / "latents"
    argv = [
        "encode",
        "--checkpoint",
        str(tiny_checkpoint),
        "--input",
        str(clip_dataset),
        "--output",
        str(out),
        "--resolution",
        "64x64",
        "--resolution",
        "64x112",
        "--frames",
        "17",
        "--device",
        "cpu",
        *extra,
    ]
    assert main(argv) == 0
    ds = mf.LatentDataset(out)
    h = ds.header
    # --fast is a no-op on CPU; the budget (1 byte) means one frame / chunk per call.
    assert h.config["max_activation_bytes"] == (1 if extra else None)
    assert h.config["frame_batch_size"] == (None if extra else 16)
    assert h.vae_checkpoint_id == checkpoint_id(tiny_checkpoint)
    assert h.latents_normalized is True
    model = MUGVAE.from_pretrained(tiny_checkpoint)
    assert h.latent_std == pytest.approx(model.latent_std.tolist())
    samples = {s.record.key: s for s in ds}
    assert set(samples) == {"bikes", "carphone_pristine", "bigbuckbunny"}
    # bikes is 640x272 (wide) -> the 64x112 bucket; carphone 176x144 -> 64x64.
    assert samples["bikes"].latents.shape == (24, 3, 8, 14)
    assert samples["carphone_pristine"].latents.shape == (24, 3, 8, 8)
    clips = {r.key: mp4 for r, mp4 in mf.ClipDataset(clip_dataset)}
    video = load_clip(clips["bikes"], 17, [(64, 64), (64, 112)])
    with torch.no_grad():
        expected = model.encode(video.unsqueeze(0))[0].numpy()
    np.testing.assert_allclose(samples["bikes"].latents, expected, rtol=1e-5, atol=1e-5)
    # Resume: a rerun with the parts kept skips every shard and gives the same dataset (a
    # complete output is replaced only with --overwrite, issue 23).
    assert main([*argv, "--keep-parts", "--overwrite"]) == 0
    assert main([*argv, "--keep-parts", "--overwrite"]) == 0
    assert len(mf.LatentDataset(out)) == 3


def test_encode_refuses_a_newer_clip_format(tiny_checkpoint, clip_dataset, tmp_path, capsys):
    newer = tmp_path / "newer"
    newer.mkdir()
    for f in clip_dataset.iterdir():
        (newer / f.name).write_bytes(f.read_bytes())
    meta = json.loads((newer / "dataset.json").read_text())
    meta["version"] = "9.0"
    (newer / "dataset.json").write_text(json.dumps(meta))
    argv = [
        "encode",
        "--checkpoint",
        str(tiny_checkpoint),
        "--input",
        str(newer),
        "--output",
        str(tmp_path / "o"),
        "--resolution",
        "64x64",
        "--frames",
        "9",
        "--device",
        "cpu",
    ]
    assert main(argv) == 2
    assert "newer major version" in capsys.readouterr().err
    bad_res = [*argv[:-6], "--resolution", "60x64", "--frames", "9", "--device", "cpu"]
    assert main(bad_res) == 2
    assert "multiples of 8" in capsys.readouterr().err


def test_encode_refuses_a_kept_part_of_another_checkpoint(
    tiny_checkpoint, clip_dataset, tmp_path, capsys
):
    """A rerun reuses kept parts; one written from another VAE checkpoint used to be merged
    silently under this run's header. Now the merge refuses it naming the part and field, and
    the merged header is derived from the parts' (every field carried)."""
    out = tmp_path / "latents"
    argv = [
        "encode", "--checkpoint", str(tiny_checkpoint), "--input", str(clip_dataset),
        "--output", str(out), "--resolution", "64x64", "--frames", "9", "--device", "cpu",
        "--keep-parts",
    ]  # fmt: skip
    assert main(argv) == 0
    first = mf.LatentDataset(out).header
    assert first.vae_checkpoint_id == checkpoint_id(tiny_checkpoint)
    part = next(p for p in (tmp_path / "latents.parts").iterdir() if p.is_dir()) / "dataset.json"
    meta = json.loads(part.read_text())
    meta["vae_checkpoint_id"] = "another-vae"
    part.write_text(json.dumps(meta))
    assert main([*argv, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "vae_checkpoint_id is 'another-vae'" in err and str(part) in err
    assert mf.LatentDataset(out).header.created == first.created  # the output is untouched
