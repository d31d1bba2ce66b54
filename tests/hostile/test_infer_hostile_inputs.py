"""mugv-infer against hostile inputs (issue 23): non-finite weights and values never make a
video (refused at load / at the command line / at the step that went non-finite), every input
and the output path are checked before any model loads, and the errors found later are one
line, exit 2."""

from __future__ import annotations

import math
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile_util import unwritable_dir

pytest.importorskip("diffusers")

sys.path.insert(0, str(Path(__file__).parents[2] / "packages" / "mugv-infer" / "tests"))
from mugv_infer_fixtures import tiny_parts, tiny_transformer

HW = "32x48"


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict[str, Path]:
    return tiny_parts(tmp_path_factory.mktemp("infer-parts"))


def _argv(parts, out, *extra, command: str = "generate") -> list[str]:
    argv = [
        command,
        "--model", str(parts["model"]),
        "--vae", str(parts["vae"]),
        "--text-encoder", str(parts["t5"]),
        "--prompt", "a cat walks on the grass",
        "--resolution", HW,
        "--steps", "2",
        "--out", str(out),
        "--set", "runtime.dtype=float32",
        "--set", "runtime.device=cpu",
    ]  # fmt: skip
    if command == "generate":
        argv += ["--frames", "9"]
    return argv + list(extra)


def _one_line_error(capsys, argv) -> str:
    from mugv_infer.cli import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 2, f"exit {code}; stderr: {captured.err[-2000:]}"
    # the error is the last line, alone (before it only progress bars of model loading)
    assert "Traceback" not in captured.err, captured.err
    err = captured.err.strip().splitlines()[-1]
    assert err.startswith("mugv-infer ") and ": error: " in err, captured.err
    return err


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if any model is built (the inputs must be refused before that)."""
    from mugv_infer import run

    def refuse(*a, **k):
        raise AssertionError("models were loaded before the inputs were checked")

    monkeypatch.setattr(run, "_build", refuse)


def _clip(path: Path, frames: int = 9) -> Path:
    from mugv_infer.video_io import save_video

    clip = (np.random.default_rng(0).random((frames, 32, 48, 3)) * 255).astype(np.uint8)
    return save_video(clip, path, fps=8)


# ---------------------------------------------------------------- non-finite weights at load
def _poison(tensor: torch.Tensor, value: float = math.nan) -> None:
    with torch.no_grad():
        tensor.view(-1)[3] = value


def _nan_dit(root: Path) -> tuple[Path, str]:
    model = tiny_transformer()
    _poison(model.blocks[1].mlp.fc1.weight)
    return model.save_export(root / "nan-dit"), "blocks.1.mlp.fc1.weight"


def _nan_vae(root: Path, name: str, value: float) -> tuple[Path, str]:
    from mugv_vae.config import tiny_config
    from mugv_vae.model import MUGVAE

    torch.manual_seed(0)
    vae = MUGVAE(tiny_config()).eval()
    _poison(vae.state_dict()[name], value)
    vae.save_pretrained(root / "nan-vae")
    return root / "nan-vae", name


def _nan_t5(root: Path, t5: Path) -> tuple[Path, str]:
    from transformers import AutoTokenizer, T5EncoderModel

    enc = T5EncoderModel.from_pretrained(t5, local_files_only=True)
    _poison(enc.encoder.block[0].layer[1].DenseReluDense.wo.weight, math.inf)
    enc.save_pretrained(root / "nan-t5")
    AutoTokenizer.from_pretrained(t5, local_files_only=True).save_pretrained(root / "nan-t5")
    return root / "nan-t5", "encoder.block.0.layer.1.DenseReluDense.wo.weight"


@pytest.mark.parametrize("part", ["dit", "vae-decoder", "vae-latent-std", "text-encoder"], ids=str)
def test_non_finite_weights_are_refused_at_load_naming_file_and_tensor(
    parts, tmp_path, capsys, part
):
    """Weights with a NaN / inf (a diverged run, a bad conversion) made an all-black video with
    exit 0; every loaded part is checked tensor by tensor before generation."""
    if part == "dit":
        folder, tensor = _nan_dit(tmp_path)
        flag = "--model"
    elif part == "vae-decoder":
        folder, tensor = _nan_vae(
            tmp_path, "trunk.decoder.up_blocks.0.resnets.0.conv1.weight", math.nan
        )
        flag = "--vae"
    elif part == "vae-latent-std":
        folder, tensor = _nan_vae(tmp_path, "latent_std", math.inf)
        flag = "--vae"
    else:
        folder, tensor = _nan_t5(tmp_path, parts["t5"])
        flag = "--text-encoder"
    out = tmp_path / "v.mp4"
    err = _one_line_error(capsys, [*_argv(parts, out), flag, folder])
    assert str(folder) in err and tensor in err and "non-finite" in err, err
    assert ".safetensors" in err, err
    assert not out.exists() and not (tmp_path / "v.resolved.yaml").exists()


def test_non_finite_lora_is_refused_naming_file_and_tensor(parts, tmp_path, capsys):
    from mugv_infer.enhancer import add_lora, save_lora

    model = add_lora(tiny_transformer())
    name, param = next((n, p) for n, p in model.blocks.named_parameters() if "lora_B" in n)
    _poison(param)
    save_lora(model, tmp_path / "lora")
    video = _clip(tmp_path / "in.mp4")
    out = tmp_path / "enh.mp4"
    argv = _argv(parts, out, "--video", video, "--lora", tmp_path / "lora", command="enhance")
    err = _one_line_error(capsys, argv)
    assert "adapter_model.safetensors" in err and "non-finite" in err, err
    assert name.split(".lora_B")[0] in err, err
    assert not out.exists()


def test_pipeline_from_parts_refuses_non_finite_weights(parts, tmp_path):
    from mugv_infer import MUGVPipeline

    folder, tensor = _nan_dit(tmp_path)
    with pytest.raises(ValueError, match=rf"{tensor}.*non-finite"):
        MUGVPipeline.from_parts(folder, parts["vae"], parts["t5"])


# ---------------------------------------------------------------- non-finite / out-of-range values
@pytest.mark.parametrize(
    ("extra", "field"),
    [
        (["--guidance-scale", "inf"], "guidance_scale"),
        (["--guidance-scale", "nan"], "guidance_scale"),
        (["--set", "fps=.inf"], "fps"),
        (["--set", "fps=1e300"], "fps"),
        (["--set", "output_fps=.inf"], "output_fps"),
        (["--set", "output_fps=.nan"], "output_fps"),
        (["--set", "aesthetic_score=.nan"], "aesthetic_score"),
        (["--set", "guidance_rescale=.nan"], "guidance_rescale"),
        (["--set", "runtime.step_cache_threshold=.inf"], "step_cache_threshold"),
        (["--set", "runtime.vae_tile=0"], "vae_tile"),
        (["--seed", "-1"], "seed"),
        (["--seed", str(2**64)], "seed"),
        (["--set", "seed=1.5"], "seed"),
        (["--set", "seed=true"], "seed"),
        (["--steps", "100000"], "steps"),
        (["--resolution", "16000x16000"], "height"),
        (["--frames", "100001"], "num_frames"),
        (["--set", "num_videos_per_prompt=100000"], "num_videos_per_prompt"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else v,
)
def test_generate_values_are_checked_before_any_model_loads(
    parts, tmp_path, capsys, no_model_load, extra, field
):
    err = _one_line_error(capsys, _argv(parts, tmp_path / "v.mp4", *extra))
    assert field in err, err


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        (["--strength", "nan"], "strength"),
        (["--strength", "inf"], "strength"),
        (["--guidance-scale", "inf"], "guidance_scale"),
        (["--set", "fps=.inf"], "fps"),
        (["--set", "fps=-3"], "fps"),
        (["--set", "output_fps=0"], "output_fps"),
        (["--seed", "-5"], "seed"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else v,
)
def test_enhance_values_are_checked_before_any_model_loads(
    parts, tmp_path, capsys, no_model_load, extra, field
):
    video = _clip(tmp_path / "in.mp4")
    argv = _argv(parts, tmp_path / "e.mp4", "--video", video, *extra, command="enhance")
    assert field in _one_line_error(capsys, argv)


@pytest.fixture
def pipe(parts):
    from mugv_infer import MUGVPipeline

    p = MUGVPipeline.from_parts(parts["model"], parts["vae"], parts["t5"])
    p.set_progress_bar_config(disable=True)
    return p


CALL = dict(prompt="a cat", height=32, width=32, num_frames=9, num_inference_steps=2)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"guidance_scale": math.inf}, "guidance_scale"),
        ({"guidance_scale": math.nan}, "guidance_scale"),
        ({"fps": math.inf}, "fps"),
        ({"fps": math.nan}, "fps"),
        ({"fps": 0.0}, "fps"),
        ({"guidance_rescale": math.nan}, "guidance_rescale"),
        ({"guidance_rescale": 2.0}, "guidance_rescale"),
        ({"aesthetic_score": math.nan}, "aesthetic_score"),
        ({"num_inference_steps": 2.5}, "num_inference_steps"),
        ({"num_videos_per_prompt": 0}, "num_videos_per_prompt"),
        ({"step_cache_threshold": math.inf}, "step_cache_threshold"),
        ({"height": 32.0}, "height"),
        ({"latents": torch.full((1, 24, 2, 4, 4), math.nan)}, "latents"),
        ({"image": torch.full((3, 32, 32), math.inf)}, "image"),
        ({"prompt": None, "prompt_embeds": torch.full((1, 4, 32), math.nan)}, "prompt_embeds"),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, dict) else v,
)
def test_pipeline_check_inputs_refuses_non_finite_and_out_of_range(pipe, kwargs, field):
    called = []
    pipe.transformer.register_forward_pre_hook(lambda *a: called.append(1))
    with pytest.raises(ValueError, match=field):
        pipe(**{**CALL, **kwargs})
    assert not called, "the DiT ran before the inputs were checked"


def test_enhancer_check_inputs_refuses_non_finite(parts):
    from mugv_infer.enhancer import MUGVEnhancePipeline

    pipe = MUGVEnhancePipeline.from_parts(parts["model"], parts["vae"], parts["t5"])
    video = torch.zeros(3, 9, 32, 32)
    for kwargs, field in (
        ({"strength": math.nan}, "strength"),
        ({"guidance_scale": math.inf}, "guidance_scale"),
        ({"fps": math.nan}, "fps"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
    ):
        with pytest.raises(ValueError, match=field):
            pipe(video, prompt="a cat", **kwargs)
    with pytest.raises(ValueError, match="video"):
        pipe(torch.full((3, 9, 32, 32), math.nan), prompt="a cat")


# ---------------------------------------------------------------- non-finite latents while running
def test_non_finite_latent_stops_generation_naming_the_step(pipe):
    """Whatever makes the latents non-finite mid-run (here a callback; in life an overflow)
    stops the run at that step instead of decoding a black video."""

    def poison(p, i, s, tensors):
        if i == 1:
            return {"latents": tensors["latents"] * math.nan}
        return tensors

    with pytest.raises(ValueError, match=r"non-finite latents after denoising step 2 of 3"):
        pipe(**{**CALL, "num_inference_steps": 3}, callback_on_step_end=poison)


def test_non_finite_dit_output_stops_at_the_first_step(pipe):
    """Weights poisoned after loading (or an overflow in bf16) are caught at step 1."""
    _poison(pipe.transformer.blocks[0].mlp.fc2.weight, math.inf)
    with pytest.raises(ValueError, match=r"non-finite latents after denoising step 1 of 2"):
        pipe(**CALL)


def test_non_finite_decode_is_an_error_not_a_black_video(pipe):
    _poison(dict(pipe.vae.to_mugv_vae().named_parameters())["trunk.decoder.up_blocks.0.resnets.0.conv1.weight"])
    with pytest.raises(ValueError, match=r"VAE decoded non-finite"):
        pipe(**CALL)
    # the latents themselves are fine: latent output is unaffected
    assert torch.isfinite(pipe(**CALL, output_type="latent").frames).all()


# ---------------------------------------------------------------- validate before the work
def _truncated_jpeg(path: Path) -> Path:
    from PIL import Image

    img = (np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(path.with_suffix(".full.jpg"))
    data = path.with_suffix(".full.jpg").read_bytes()
    path.write_bytes(data[: len(data) // 2])  # passes PIL's verify(), fails to decode
    return path


def _png_bomb(path: Path) -> Path:
    """A 30 kB PNG claiming 40000 x 40000 pixels (PIL refuses it as a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


@pytest.mark.parametrize(
    "case", ["truncated-jpeg", "png-bomb", "last-image-truncated", "video-garbage"]
)
def test_bad_conditioning_inputs_are_refused_before_any_model_loads(
    parts, tmp_path, capsys, no_model_load, case
):
    if case == "video-garbage":
        bad = tmp_path / "clip.mp4"
        bad.write_bytes(b"\0\0\0\x18ftypmp42" + b"garbage" * 100)
        flag = "--video"
    elif case == "png-bomb":
        bad, flag = _png_bomb(tmp_path / "bomb.png"), "--image"
    else:
        bad = _truncated_jpeg(tmp_path / "first.jpg")
        flag = "--last-image" if case.startswith("last") else "--image"
    err = _one_line_error(capsys, _argv(parts, tmp_path / "v.mp4", flag, bad))
    assert str(bad) in err, err


def test_enhance_video_is_decoded_before_any_model_loads(parts, tmp_path, capsys, no_model_load):
    bad = tmp_path / "in.mp4"
    bad.write_bytes(b"not a video")
    argv = _argv(parts, tmp_path / "e.mp4", "--video", bad, command="enhance")
    assert str(bad) in _one_line_error(capsys, argv)


@pytest.mark.parametrize(
    "case", ["mp4-is-folder", "gif-is-folder", "frames-is-file", "parent-is-file", "read-only"]
)
def test_unusable_output_paths_are_refused_before_any_model_loads(
    parts, tmp_path, capsys, no_model_load, case
):
    if case == "mp4-is-folder":
        out = tmp_path / "v.mp4"
        out.mkdir()
    elif case == "gif-is-folder":
        out = tmp_path / "v.gif"
        out.mkdir()
    elif case == "frames-is-file":
        out = tmp_path / "frames"
        out.write_text("a user's file")
    elif case == "parent-is-file":
        (tmp_path / "run").write_text("a file where a folder is needed")
        out = tmp_path / "run" / "v.mp4"
    else:
        out = unwritable_dir(tmp_path) / "sub" / "v.mp4"
    err = _one_line_error(capsys, _argv(parts, out))
    assert str(out) in err or str(out.parent) in err, err


def test_latent_output_path_that_is_a_file_is_refused_before_any_model_loads(
    parts, tmp_path, capsys, no_model_load
):
    out = tmp_path / "shards"
    out.write_text("a user's file")
    err = _one_line_error(capsys, _argv(parts, out, "--output-type", "latent"))
    assert str(out) in err


def test_write_failure_after_generation_is_one_line(parts, tmp_path, capsys, monkeypatch):
    """An error of the disk while writing (full, read-only remount) is one line, exit 2."""
    import errno

    from mugv_infer import run

    def enospc(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run, "save_video", enospc)
    out = tmp_path / "v.mp4"
    err = _one_line_error(capsys, _argv(parts, out))
    assert str(out) in err and "No space left" in err, err


# ---------------------------------------------------------------- planted symlinks
@pytest.mark.parametrize("case", ["mp4", "gif", "resolved-yaml", "frames-folder", "frame-file"])
def test_planted_symlinks_at_outputs_are_refused(parts, tmp_path, capsys, case):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if case in ("mp4", "gif"):
        out = tmp_path / f"v.{case}"
        out.symlink_to(victim)
    elif case == "resolved-yaml":
        out = tmp_path / "v.mp4"
        (tmp_path / "v.resolved.yaml").symlink_to(victim)
    elif case == "frames-folder":
        out = tmp_path / "frames"
        out.symlink_to(elsewhere, target_is_directory=True)
    else:
        out = tmp_path / "frames"
        out.mkdir()
        (out / "frame_00000.png").symlink_to(victim)
    err = _one_line_error(capsys, _argv(parts, out))
    assert "symlink" in err or "symbolic link" in err, err
    assert victim.read_text() == "precious" and not any(elsewhere.iterdir())
    shutil.rmtree(elsewhere)
