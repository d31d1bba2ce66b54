"""``mugv-infer convert`` of a debug-size release checkpoint (issue 30): a ``dit.pt`` in the
release's names and layouts (written with mugv-dit's own inverse mapping), converted through
``mugv-dit import-original`` into a diffusers folder that ``DiffusionPipeline`` loads and
generates from, with a model card. Across packages, so it lives here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
sys.path.insert(0, str(Path(__file__).parents[1] / "packages" / "mugv-infer" / "tests"))
from mugv_infer_fixtures import tiny_t5


@pytest.fixture(scope="module")
def release_parts(tmp_path_factory):
    """A debug-size ``dit.pt`` as the release writes it (original names, fused qkv, 5-D patch
    weight), its mugv-names state, a tiny VAE checkpoint and a tiny T5 folder."""
    from mugv_dit.config import model_preset
    from mugv_dit.interop.original import mugv_to_original
    from mugv_infer.models import MUGDiTTransformer3DModel
    from mugv_infer.models.presets import preset
    from mugv_vae.config import tiny_config
    from mugv_vae.model import MUGVAE
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("release")
    model = MUGDiTTransformer3DModel(**preset("debug"), in_channels=24)
    model.initialize_weights(3).save_export(root / "export")
    state = {}
    for f in sorted((root / "export").glob("*.safetensors")):
        state.update(load_file(f))
    torch.save(mugv_to_original(state, model_preset("debug")), root / "dit.pt")
    torch.manual_seed(0)
    MUGVAE(tiny_config()).eval().save_pretrained(root / "vae")
    return {"dit": root / "dit.pt", "state": state, "vae": root / "vae",
            "t5": tiny_t5(root / "text"), "root": root}  # fmt: skip


def test_convert_release_dit_loads_in_diffusers_and_generates(release_parts, tmp_path, capsys):
    import mugv_infer  # noqa: F401  (registers MUGVPipeline with diffusers)
    from diffusers import DiffusionPipeline
    from mugv_infer.cli import main

    out = tmp_path / "mugv-debug"
    args = ["convert", "--dit", str(release_parts["dit"]), "--vae", str(release_parts["vae"]),
            "--text-encoder", str(release_parts["t5"]), "--out", str(out), "--dit-preset", "debug"]  # fmt: skip
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"folder": str(out)}
    assert not list(tmp_path.glob(".mugv-convert-*"))  # the work folder is gone

    card = (out / "README.md").read_text()
    head = card.split("---")[1]
    assert "library_name: diffusers" in head and "pipeline_tag: text-to-video" in head
    assert "\nlicense:" in head  # left for the user to fill in
    assert "DiffusionPipeline.from_pretrained" in card and "dit.pt" in card

    pipe = DiffusionPipeline.from_pretrained(out)
    # every release tensor arrived under its mugv name (the null caption is import-original's)
    loaded = pipe.transformer.state_dict()
    for name, t in release_parts["state"].items():
        if name != "y_embedder.null_caption":
            assert torch.equal(loaded[name], t), name
    pipe.set_progress_bar_config(disable=True)
    video = pipe(
        "a cat walks", height=32, width=32, num_frames=9, num_inference_steps=2,
        generator=torch.Generator().manual_seed(0), output_type="pt",
    ).frames  # fmt: skip
    assert video.shape == (1, 9, 3, 32, 32) and bool(torch.isfinite(video).all())

    # a second convert onto the finished folder is refused before any model loads
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_convert_refuses_bad_inputs_naming_them(release_parts, tmp_path, capsys):
    from mugv_infer.cli import main

    stray = tmp_path / "notes.txt"
    stray.write_text("x")
    base = ["convert", "--vae", str(release_parts["vae"]), "--out", str(tmp_path / "o")]
    assert main([*base, "--dit", str(stray)]) == 2
    assert "--dit" in capsys.readouterr().err
    assert main([*base, "--dit", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    users = tmp_path / "users"
    users.mkdir()
    (users / "keep.txt").write_text("mine")
    args = ["convert", "--dit", str(release_parts["dit"]), "--vae", str(release_parts["vae"]),
            "--out", str(users), "--dit-preset", "debug"]  # fmt: skip
    assert main(args) == 2
    assert "did not write" in capsys.readouterr().err
    assert (users / "keep.txt").read_text() == "mine" and len(list(users.iterdir())) == 1


def test_convert_reads_the_release_vae_file_through_mugv_vaes_importer(tmp_path):
    """``--vae vae.pt``: the same weights, statistics and checkpoint id as
    ``mugv-vae import-original`` would give (a random tiny original from mugv-vae's own test
    helper, which rebuilds the release's names and shapes)."""
    import importlib.util

    from mugv_infer.convert import load_vae
    from mugv_vae.checkpoint import checkpoint_id
    from mugv_vae.config import tiny_config
    from mugv_vae.import_original import import_original

    helper = Path(__file__).parents[1] / "packages/mugv-vae/tests/test_import_original.py"
    spec = importlib.util.spec_from_file_location("_mugv_vae_original_helper", helper)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.save(module.random_original(tiny_config(), seed=1), tmp_path / "vae.pt")

    (tmp_path / "work").mkdir()
    ours = load_vae(tmp_path / "vae.pt", "tiny", tmp_path / "work")
    ref = import_original(tmp_path / "vae.pt", tiny_config())
    ref.save_pretrained(tmp_path / "imported")
    assert ours.config.checkpoint_id == checkpoint_id(tmp_path / "imported")
    got = ours.to_mugv_vae().state_dict()
    for name, t in ref.state_dict().items():
        assert torch.equal(got[name], t), name
