"""VAE checkpoint folders: round trip, id, errors; the init CLI."""

from __future__ import annotations

import json
from pathlib import Path

import mugv_formats as mf
import pytest
import torch
from mugv_vae.checkpoint import checkpoint_id
from mugv_vae.cli import main
from mugv_vae.model import MUGVAE


def test_round_trip_keeps_weights_stats_and_outputs(tiny_checkpoint, make_video, tmp_path):
    model = MUGVAE.from_pretrained(tiny_checkpoint)
    folder = mf.load_weights_folder(tiny_checkpoint, format=mf.VAE_CHECKPOINT_FORMAT)
    for k, v in model.state_dict().items():
        assert torch.equal(v, folder.state_dict[k]), k
    assert folder.extra["latent_std"] == pytest.approx(model.latent_std.tolist())
    video = make_video(t=9)
    with torch.no_grad():
        z = model.encode(video)
        model.save_pretrained(tmp_path / "again")
        again = MUGVAE.from_pretrained(tmp_path / "again")
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
        MUGVAE.from_pretrained(other)
    newer = tmp_path / "newer"
    newer.mkdir()
    for f in tiny_checkpoint.iterdir():
        (newer / f.name).write_bytes(f.read_bytes())
    meta["version"] = "99.0"
    (newer / "config.json").write_text(json.dumps(meta))
    with pytest.raises(mf.VersionError):
        MUGVAE.from_pretrained(newer)
    with pytest.raises(TypeError):  # the architecture is the checkpoint's, not the loader's
        MUGVAE.from_pretrained(tiny_checkpoint, latent_channels=4)


def test_init_cli_writes_a_loadable_seeded_checkpoint(tmp_path):
    assert main(["init", "--preset", "tiny", "--output", str(tmp_path / "a"), "--seed", "3"]) == 0
    assert main(["init", "--preset", "tiny", "--output", str(tmp_path / "b"), "--seed", "3"]) == 0
    assert checkpoint_id(tmp_path / "a") == checkpoint_id(tmp_path / "b")
    assert MUGVAE.from_pretrained(tmp_path / "a").config.trunk.feature_channels == 16
    assert main(["init", "--preset", "nope", "--output", str(tmp_path / "c")]) == 2


def _as_format_1_0(folder, **runtime):
    """Rewrite ``config.json`` the way mugv-vae wrote it at format 1.0: the runtime fields
    (these seven, with their stored values) inside ``config`` (the weights files and their
    sha256 are unchanged)."""
    meta = json.loads((folder / "config.json").read_text())
    old = {
        "fused_group_norm_silu": False,
        "gradient_checkpointing": False,
        "channels_last": False,
        "fused_nhwc_ops": False,
        "fold_upsample_conv": False,
        "compile_trunk": False,
        "max_activation_bytes": None,
    }
    old.update(runtime)
    meta["version"] = "1.0"
    meta["config"] = {**meta["config"], **old}
    (folder / "config.json").write_text(json.dumps(meta, indent=2))


def test_a_format_1_0_checkpoint_with_runtime_fields_still_loads(
    tiny_checkpoint, make_video, tmp_path
):
    import shutil

    from mugv_vae.config import VAERuntime

    old = tmp_path / "old"
    shutil.copytree(tiny_checkpoint, old)
    _as_format_1_0(old, gradient_checkpointing=True, channels_last=True, max_activation_bytes=7)
    model = MUGVAE.from_pretrained(old)
    ref = MUGVAE.from_pretrained(tiny_checkpoint)
    assert model.config == ref.config
    assert model.runtime == VAERuntime()  # what was stored is not a choice of this load
    for k, v in ref.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    video = make_video(t=9)
    with torch.no_grad():
        torch.testing.assert_close(model.encode(video), ref.encode(video), rtol=0, atol=0)
    assert checkpoint_id(old) == checkpoint_id(tiny_checkpoint)
    fast = MUGVAE.from_pretrained(old, runtime=VAERuntime(channels_last=True))
    assert fast.trunk.channels_last
    # re-saved, it is a 1.1 checkpoint without them
    model.save_pretrained(tmp_path / "resaved")
    meta = json.loads((tmp_path / "resaved" / "config.json").read_text())
    assert meta["version"] == "1.1" and "channels_last" not in meta["config"]


def test_a_format_1_1_checkpoint_with_a_runtime_field_is_refused_by_name(tiny_checkpoint, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)
    meta = json.loads((bad / "config.json").read_text())
    meta["config"]["channels_last"] = True
    (bad / "config.json").write_text(json.dumps(meta))
    with pytest.raises(mf.FormatError) as e:
        MUGVAE.from_pretrained(bad)
    assert str(e.value) == (
        f"{bad}/config.json: invalid VAE config: field config.channels_last: Extra inputs are "
        "not permitted (value True) (a runtime setting: chosen at load with VAERuntime)"
    )


def test_checkpoint_module_does_not_import_the_model():
    """The dependency runs one way (model -> checkpoint): no import of ``mugv_vae.model`` in
    ``checkpoint.py``, at any level (the circle used to hide in function-level imports)."""
    import ast

    import mugv_vae.checkpoint as c
    import mugv_vae.model.vae as v

    imported = set()
    for node in ast.walk(ast.parse(Path(c.__file__).read_text())):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
            imported.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    assert "mugv_vae.config" in imported  # the scan sees its real imports
    assert not [m for m in imported if m.startswith("mugv_vae.model")], imported
    assert v.read_checkpoint is c.read_checkpoint  # the model reads through it


def test_read_checkpoint_returns_the_architecture_weights_and_stats(tiny_checkpoint):
    from mugv_vae.checkpoint import read_checkpoint

    ckpt = read_checkpoint(tiny_checkpoint)
    model = MUGVAE.from_pretrained(tiny_checkpoint)
    assert ckpt.config == model.config
    assert set(ckpt.state_dict) == set(model.state_dict())
    assert ckpt.extra["latent_mean"] == model.latent_mean.tolist()
