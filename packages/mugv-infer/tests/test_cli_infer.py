"""The ``mugv-infer`` command: generate (T2V, I2V) to MP4 / GIF / frames / latent shards,
enhance, resolved settings beside the output, one-line user errors with exit status 2."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import yaml
from mugv_infer import __version__
from mugv_infer.cli import main


def test_version_flag_prints_package_version(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"mugv-infer {__version__}"


def test_unknown_command_is_an_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2


def _base(parts, out, *extra):
    return [
        "generate",
        "--model", str(parts["model"]),
        "--vae", str(parts["vae"]),
        "--text-encoder", str(parts["t5"]),
        "--prompt", "a cat walks on the grass",
        "--resolution", "32x48",
        "--frames", "9",
        "--steps", "2",
        "--out", str(out),
        "--set", "runtime.dtype=float32",
        "--set", "runtime.device=cpu",
        *extra,
    ]  # fmt: skip


def test_generate_t2v_writes_mp4_and_resolved_settings(parts, tmp_path, capsys):
    out = tmp_path / "v.mp4"
    assert main(_base(parts, out, "--set", "guidance_rescale=0.5")) == 0
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 9 and frames[0].shape == (32, 48, 3)
    resolved = yaml.safe_load((tmp_path / "v.resolved.yaml").read_text())
    assert resolved["guidance_rescale"] == 0.5 and resolved["frames"] == 9
    assert resolved["runtime"]["dtype"] == "float32"
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["outputs"] == [str(out)]


def test_generate_i2v_gif_and_frames(parts, tmp_path):
    from PIL import Image

    img = (np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "first.png")
    gif = tmp_path / "v.gif"
    assert main(_base(parts, gif, "--image", str(tmp_path / "first.png"))) == 0
    with Image.open(gif) as im:
        assert im.n_frames == 9 and im.size == (48, 32)
    folder = tmp_path / "frames"
    assert main(_base(parts, folder)) == 0
    assert len(list(folder.glob("frame_*.png"))) == 9
    assert (folder / "resolved_config.yaml").is_file()


def test_generate_latent_shards_readable_by_mugv_formats(parts, tmp_path):
    from mugv_formats import LatentDataset

    out = tmp_path / "shards"
    argv = _base(parts, out, "--output-type", "latent", "--prompt", "a red car drives fast")
    assert main([*argv, "--set", "num_videos_per_prompt=2"]) == 0
    ds = LatentDataset(out)
    samples = list(ds)
    assert len(samples) == 4
    assert ds.header.latents_normalized and ds.header.vae_checkpoint_id.startswith("mugv-vae:")
    assert ds.header.text_dim == 32
    s = samples[0]
    assert s.latents.shape == (24, 2, 4, 6)
    assert s.record.caption.startswith("a cat walks on the grass aesthetic score: 6.0.")
    assert s.text.shape[1] == 32 and s.text.shape[0] == s.record.text_length
    assert {x.record.caption.split(" aesthetic")[0] for x in samples} == {
        "a cat walks on the grass",
        "a red car drives fast",
    }


def test_enhance_command_with_lora(parts, tmp_path):
    from mugv_infer.enhancer import add_lora, save_lora
    from mugv_infer.video_io import save_video
    from mugv_infer_fixtures import tiny_transformer

    clip = (np.random.default_rng(0).random((9, 32, 48, 3)) * 255).astype(np.uint8)
    save_video(clip, tmp_path / "in.mp4", fps=8)
    save_lora(add_lora(tiny_transformer()), tmp_path / "lora")
    out = tmp_path / "enh.mp4"
    argv = [
        "enhance", "--model", str(parts["model"]), "--vae", str(parts["vae"]),
        "--text-encoder", str(parts["t5"]), "--video", str(tmp_path / "in.mp4"),
        "--lora", str(tmp_path / "lora"), "--prompt", "a cat", "--resolution", "32x48",
        "--out", str(out), "--set", "runtime.dtype=float32", "--set", "runtime.device=cpu",
    ]  # fmt: skip
    assert main(argv) == 0
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 9
    assert yaml.safe_load((tmp_path / "enh.resolved.yaml").read_text())["strength"] == 0.3


def test_generate_with_several_weighted_loras(parts, tmp_path, capsys):
    """``--lora PATH[:WEIGHT]`` (repeatable) fuses each adapter with its weight: two copies at
    0.5 generate what one at 1 does, which differs from no adapter; a folder without an
    adapter is a one-line error naming it; the resolved settings list the adapters."""
    import torch
    from mugv_formats import LatentDataset
    from mugv_infer.config import parse_lora
    from mugv_infer.enhancer import add_lora, save_lora
    from mugv_infer_fixtures import tiny_transformer

    donor = add_lora(tiny_transformer(), rank=4, alpha=8.0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in donor.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    save_lora(donor, tmp_path / "ad")
    ad = str(tmp_path / "ad")

    def latents(name, *lora):
        out = tmp_path / name
        assert main(_base(parts, out, "--output-type", "latent", *lora)) == 0
        return torch.from_numpy(np.stack([s.latents for s in LatentDataset(out)]))

    plain = latents("plain")
    one = latents("one", "--lora", ad)
    halves = latents("halves", "--lora", f"{ad}:0.5", "--lora", f"{ad}:0.5")
    assert (one - plain).abs().max() > 1e-3
    torch.testing.assert_close(halves, one, rtol=1e-4, atol=1e-5)
    resolved = yaml.safe_load((tmp_path / "halves" / "resolved_config.yaml").read_text())
    assert resolved["lora"] == [{"path": ad, "weight": 0.5}, {"path": ad, "weight": 0.5}]
    assert parse_lora("a:b/c") == {"path": "a:b/c", "weight": 1.0}
    assert parse_lora("x/y:-2") == {"path": "x/y", "weight": -2.0}
    capsys.readouterr()
    err = _error(capsys, _base(parts, tmp_path / "e.mp4", "--lora", f"{tmp_path}:2"))
    assert f"LoRA folder {tmp_path} has no adapter_config.json" in err


@pytest.fixture(scope="module")
def bad_vae(tmp_path_factory):
    from mugv_vae.config import tiny_config
    from mugv_vae.model import MUGVAE

    path = tmp_path_factory.mktemp("badvae") / "vae16"
    MUGVAE(tiny_config().model_copy(update={"latent_channels": 16})).save_pretrained(path)
    return path


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_user_errors_are_one_line_and_name_the_thing(parts, tmp_path, capsys, bad_vae):
    out = tmp_path / "v.mp4"
    err = _error(capsys, _base(parts, out, "--model", str(tmp_path / "nope")))
    assert "nope" in err and "config.json" in err
    err = _error(capsys, _base(parts, out, "--vae", str(bad_vae)))
    assert "16 latent channels" in err and "in_channels=24" in err
    err = _error(capsys, _base(parts, out, "--frames", "10"))
    assert "num_frames=10" in err
    err = _error(capsys, _base(parts, out, "--resolution", "30x48"))
    assert "height=30" in err
    (tmp_path / "broken.png").write_bytes(b"not a png")
    err = _error(capsys, _base(parts, out, "--image", str(tmp_path / "broken.png")))
    assert "broken.png" in err and "not a readable image" in err
    err = _error(capsys, _base(parts, out, "--set", "runtime.no_such=1"))
    assert "runtime.no_such" in err
    err = _error(capsys, _base(parts, out, "--set", "runtime.sequence_parallel=2"))
    assert "torchrun" in err
    argv = _base(parts, out)
    i = argv.index("--text-encoder")
    err = _error(capsys, argv[:i] + argv[i + 2 :])
    assert "--text-encoder" in err
    assert not out.exists()


def test_settings_file_flags_and_set_in_that_order_and_file_errors(tmp_path, capsys):
    from mugv_infer.config import GenerateConfig, resolve

    path = tmp_path / "gen.yaml"
    path.write_text(
        "model: m\nvae: v\nsteps: 3\nseed: 5\nprompt: [a, c]\nruntime: {dtype: float32}\n"
    )
    cfg = resolve(GenerateConfig, path, {"steps": 4, "seed": None}, ["steps=6", "prompt.1=b"])
    assert (cfg.steps, cfg.seed, cfg.prompt, cfg.runtime.dtype) == (6, 5, ["a", "b"], "float32")
    assert resolve(GenerateConfig, path, {}, ["prompt=one"]).prompt == ["one"]
    assert resolve(GenerateConfig, path, {"steps": 4}, []).steps == 4
    path.write_text("model: m\nvae: v\nsteps: 0\n")
    err = _error(capsys, ["generate", "--config", str(path)])
    assert str(path) in err and "steps = 0" in err
    path.write_text("steps: [1\n")
    err = _error(capsys, ["generate", "--config", str(path)])
    assert str(path) in err and "not valid YAML" in err
