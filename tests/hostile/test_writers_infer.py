"""mugv-infer's writers never replace what they did not write (issue 23, severe 2): videos,
frame folders and latent shards go through ``mugv_formats.outputs.claim_output`` rules; our
own output is replaced only with ``--overwrite``; latent shards join an existing dataset only
with ``--append`` and a matching latent header; an output equal to / inside an input is
refused. All refusals come before any model loads."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hostile_util import make_latents

pytest.importorskip("diffusers")

sys.path.insert(0, str(Path(__file__).parents[2] / "packages" / "mugv-infer" / "tests"))
from mugv_infer_fixtures import tiny_parts


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict[str, Path]:
    return tiny_parts(tmp_path_factory.mktemp("infer-parts"))


def _argv(parts, out, *extra) -> list[str]:
    return [
        "generate",
        "--model", str(parts["model"]),
        "--vae", str(parts["vae"]),
        "--text-encoder", str(parts["t5"]),
        "--prompt", "a cat walks on the grass",
        "--resolution", "32x32",
        "--frames", "9",
        "--steps", "1",
        "--out", str(out),
        "--set", "runtime.dtype=float32",
        "--set", "runtime.device=cpu",
        *map(str, extra),
    ]  # fmt: skip


def _run(capsys, argv) -> tuple[int, str]:
    from mugv_infer.cli import main

    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    return code, err.splitlines()[-1] if err else ""


def _refused(capsys, argv) -> str:
    code, err = _run(capsys, argv)
    assert code == 2 and ": error: " in err, err
    return err


@pytest.fixture
def no_model_load(monkeypatch):
    from mugv_infer import run

    def refuse(*a, **k):
        raise AssertionError("models were loaded before the output was checked")

    monkeypatch.setattr(run, "_build", refuse)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_a_users_video_is_never_replaced(parts, tmp_path, capsys, no_model_load, suffix):
    out = tmp_path / f"holiday{suffix}"
    out.write_bytes(b"the user's own video")
    for extra in ([], ["--overwrite"]):
        err = _refused(capsys, _argv(parts, out, *extra))
        assert str(out) in err and "not written by mugv-infer" in err, err
    assert out.read_bytes() == b"the user's own video"


def test_our_video_is_replaced_only_with_overwrite(parts, tmp_path, capsys):
    out = tmp_path / "v.mp4"
    assert _run(capsys, _argv(parts, out))[0] == 0
    first = out.read_bytes()
    err = _refused(capsys, _argv(parts, out, "--seed", "7"))
    assert "--overwrite" in err and out.read_bytes() == first
    assert _run(capsys, _argv(parts, out, "--seed", "7", "--overwrite"))[0] == 0
    assert out.read_bytes() != first


def test_a_users_folder_is_never_written_as_frames(parts, tmp_path, capsys, no_model_load):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "me.jpg").write_bytes(b"jpeg")
    before = _snapshot(out)
    for extra in ([], ["--overwrite"]):
        err = _refused(capsys, _argv(parts, out, *extra))
        assert str(out) in err and "me.jpg" in err, err
    assert _snapshot(out) == before


def test_our_frames_folder_is_replaced_only_with_overwrite(parts, tmp_path, capsys):
    out = tmp_path / "frames"
    assert _run(capsys, _argv(parts, out))[0] == 0
    assert len(list(out.glob("frame_*.png"))) == 9
    err = _refused(capsys, _argv(parts, out))
    assert "--overwrite" in err
    assert _run(capsys, _argv(parts, out, "--seed", "3", "--overwrite"))[0] == 0
    assert len(list(out.glob("frame_*.png"))) == 9
    assert "seed: 3" in (out / "resolved_config.yaml").read_text()


def test_latents_are_not_merged_into_an_existing_training_set(
    parts, tmp_path, capsys, no_model_load
):
    """The medium item: --output-type latent into a dataset folder silently added generated
    samples to a training set and rewrote its header."""
    data = make_latents(tmp_path / "train", n=4)
    before = _snapshot(data)
    err = _refused(capsys, _argv(parts, data, "--output-type", "latent"))
    assert str(data) in err and "--overwrite" in err, err
    assert _snapshot(data) == before


def test_latents_are_not_written_into_a_users_folder(parts, tmp_path, capsys, no_model_load):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "todo.txt").write_text("x")
    err = _refused(capsys, _argv(parts, out, "--output-type", "latent", "--overwrite"))
    assert "todo.txt" in err
    assert sorted(p.name for p in out.iterdir()) == ["todo.txt"]


def test_append_adds_samples_to_a_matching_dataset_and_keeps_its_header(parts, tmp_path, capsys):
    from mugv_formats import LatentDataset

    out = tmp_path / "gen"
    assert _run(capsys, _argv(parts, out, "--output-type", "latent"))[0] == 0
    header = json.loads((out / "dataset.json").read_text())
    argv = _argv(parts, out, "--output-type", "latent", "--append", "--seed", "5")
    assert _run(capsys, argv)[0] == 0
    ds = LatentDataset(out)
    assert sorted(r.key for r in ds.records()) == ["gen-s5-000000", "gen000000"]
    assert len(list(ds)) == 2
    after = json.loads((out / "dataset.json").read_text())
    assert after["config"] == header["config"] and after["producer"] == header["producer"]
    # the same seed again would clash with the keys already there
    err = _refused(capsys, argv)
    assert "seed 5" in err


@pytest.mark.parametrize("field", ["vae_checkpoint_id", "latent_channels"])
def test_append_refuses_a_dataset_with_another_latent_header(
    parts, tmp_path, capsys, no_model_load, field
):
    from mugv_vae.checkpoint import checkpoint_id

    # another VAE; or the same VAE id with another channel count
    kwargs = (
        {"channels": 16, "vae": checkpoint_id(parts["vae"])} if field == "latent_channels" else {}
    )
    data = make_latents(tmp_path / "train", n=3, **kwargs)
    before = _snapshot(data)
    err = _refused(capsys, _argv(parts, data, "--output-type", "latent", "--append"))
    assert field in err, err
    assert _snapshot(data) == before


def test_append_needs_a_complete_dataset(parts, tmp_path, capsys, no_model_load):
    err = _refused(capsys, _argv(parts, tmp_path / "none", "--output-type", "latent", "--append"))
    assert "not a complete mugv.latent-shards" in err


@pytest.mark.parametrize("case", ["out-is-model", "out-inside-vae", "out-holds-image"])
def test_output_equal_to_or_nested_in_an_input_is_refused(
    parts, tmp_path, capsys, no_model_load, case
):
    before = {k: _snapshot(v) for k, v in parts.items()}
    extra: list = []
    if case == "out-is-model":
        out = parts["model"]
        extra = ["--output-type", "latent", "--overwrite"]
    elif case == "out-inside-vae":
        out = parts["vae"] / "v.mp4"
    else:
        import numpy as np
        from PIL import Image

        out = tmp_path / "frames"
        out.mkdir()
        img = out / "first.png"
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
        extra = ["--image", img]
    err = _refused(capsys, _argv(parts, out, *extra))
    assert "input" in err, err
    assert {k: _snapshot(v) for k, v in parts.items()} == before


def test_save_pretrained_never_replaces_a_users_folder_and_ours_only_with_overwrite(
    parts, tmp_path
):
    from mugv_formats.outputs import OutputError
    from mugv_infer import MUGVPipeline

    pipe = MUGVPipeline.from_parts(parts["model"], parts["vae"], parts["t5"])
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.tex").write_text("x")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="thesis.tex"):
            pipe.save_pretrained(user, overwrite=overwrite)
    assert sorted(p.name for p in user.iterdir()) == ["thesis.tex"]
    saved = tmp_path / "saved"
    pipe.save_pretrained(saved)
    with pytest.raises(OutputError, match="overwrite"):
        pipe.save_pretrained(saved)
    pipe.save_pretrained(saved, overwrite=True)
    again = MUGVPipeline.from_pretrained(saved)
    assert type(again) is MUGVPipeline
    with pytest.raises(OutputError, match="input|symbolic link"):
        (tmp_path / "link").symlink_to(saved, target_is_directory=True)
        pipe.save_pretrained(tmp_path / "link", overwrite=True)


def test_save_lora_never_replaces_a_users_folder_and_ours_only_with_overwrite(tmp_path):
    from mugv_formats.outputs import OutputError
    from mugv_infer.enhancer import add_lora, load_lora, save_lora
    from mugv_infer_fixtures import tiny_transformer

    model = add_lora(tiny_transformer())
    user = tmp_path / "mine"
    user.mkdir()
    (user / "adapter_model.safetensors").write_bytes(b"someone else's adapter")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match=str(user)):
            save_lora(model, user, overwrite=overwrite)
    assert (user / "adapter_model.safetensors").read_bytes() == b"someone else's adapter"
    ours = tmp_path / "lora"
    save_lora(model, ours)
    with pytest.raises(OutputError, match="overwrite"):
        save_lora(model, ours)
    save_lora(model, ours, overwrite=True)
    load_lora(tiny_transformer(), ours)
