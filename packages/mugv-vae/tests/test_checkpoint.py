"""VAE checkpoint folders: round trip, id, errors; the init CLI."""

from __future__ import annotations

import json

import mugv_formats as mf
import pytest
import torch
from mugv_vae.checkpoint import checkpoint_id, load_checkpoint
from mugv_vae.cli import main
from mugv_vae.model import MugvVAE


def test_round_trip_keeps_weights_stats_and_outputs(tiny_checkpoint, make_video, tmp_path):
    model = MugvVAE.from_pretrained(tiny_checkpoint)
    folder = mf.load_weights_folder(tiny_checkpoint, format=mf.VAE_CHECKPOINT_FORMAT)
    for k, v in model.state_dict().items():
        assert torch.equal(v, folder.state_dict[k]), k
    assert folder.extra["latent_std"] == pytest.approx(model.latent_std.tolist())
    video = make_video(t=9)
    with torch.no_grad():
        z = model.encode(video)
        model.save_pretrained(tmp_path / "again")
        again = MugvVAE.from_pretrained(tmp_path / "again")
        assert torch.equal(again.encode(video), z)
    assert checkpoint_id(tmp_path / "again") == checkpoint_id(tiny_checkpoint)


def test_loading_refuses_foreign_or_newer_folders(tiny_checkpoint, tmp_path):
    meta = json.loads((tiny_checkpoint / "config.json").read_text())
    other = tmp_path / "other"
    mf.save_weights_folder(
        other,
        format=mf.VAE_CHECKPOINT_FORMAT,
        architecture="not-a-vae",
        config={},
        state_dict={"w": torch.zeros(1)},
    )
    with pytest.raises(mf.FormatError, match="architecture"):
        load_checkpoint(other)
    newer = tmp_path / "newer"
    newer.mkdir()
    for f in tiny_checkpoint.iterdir():
        (newer / f.name).write_bytes(f.read_bytes())
    meta["version"] = "99.0"
    (newer / "config.json").write_text(json.dumps(meta))
    with pytest.raises(mf.VersionError):
        load_checkpoint(newer)
    with pytest.raises(ValueError, match="cannot override"):
        load_checkpoint(tiny_checkpoint, latent_channels=4)


def test_init_cli_writes_a_loadable_seeded_checkpoint(tmp_path):
    assert main(["init", "--preset", "tiny", "--output", str(tmp_path / "a"), "--seed", "3"]) == 0
    assert main(["init", "--preset", "tiny", "--output", str(tmp_path / "b"), "--seed", "3"]) == 0
    assert checkpoint_id(tmp_path / "a") == checkpoint_id(tmp_path / "b")
    assert MugvVAE.from_pretrained(tmp_path / "a").config.trunk.feature_channels == 16
    assert main(["init", "--preset", "nope", "--output", str(tmp_path / "c")]) == 2
