"""``mugv eval vae``: resolutions, the JSON + Markdown outputs, agreement with ``mugv-vae eval``
and an independent float64 PSNR, and one-line errors naming a missing LPIPS or checkpoint path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from mugv.cli import main
from mugv.evaluation.vae import parse_resolution
from mugv_formats.video import write_mp4
from mugv_vae.config import tiny_config
from mugv_vae.evaluate import EvalConfig, run_eval
from mugv_vae.model import MUGVAE
from mugv_vae.video import load_clip


@pytest.fixture
def setup(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        base = rng.uniform(30, 220, size=(1, 36, 48, 3))
        frames = np.clip(base + np.linspace(0, 20, 9)[:, None, None, None], 0, 255)
        write_mp4(frames.astype(np.uint8), clips / f"v{i}.mp4", 8.0, crf=10, preset="veryfast")
    torch.manual_seed(0)
    ckpt = tmp_path / "vae"
    MUGVAE(tiny_config()).save_pretrained(ckpt)
    return clips, ckpt


def test_named_resolutions_and_bad_ones():
    assert parse_resolution("256p") == (256, 256)
    assert parse_resolution("480p") == (480, 848)
    assert parse_resolution("720p") == (720, 1280)
    assert parse_resolution("16x24") == (16, 24)
    with pytest.raises(ValueError, match="1080p"):
        parse_resolution("1080p")


def test_eval_vae_tables_match_mugv_vae_eval_and_a_float64_psnr(setup, tmp_path, capsys):
    clips, ckpt = setup
    out = tmp_path / "out"
    rc = main(["eval", "vae", str(ckpt), "--clips", str(clips), "--resolutions", "16x16", "16x24",
               "--frames", "9", "--device", "cpu", "--output", str(out)])  # fmt: skip
    assert rc == 0
    res = json.loads((out / "vae.json").read_text())
    assert [r["resolution"] for r in res["resolutions"]] == ["16x16", "16x24"]
    assert res["lpips"] is None and "LPIPS not measured" in (out / "vae.md").read_text()
    r24 = res["resolutions"][1]
    assert [c["clip"] for c in r24["clips"]] == ["v0", "v1"] and r24["clips_per_second"] > 0
    # the same numbers as mugv-vae's own eval command at that resolution
    ref = run_eval(EvalConfig(checkpoint=str(ckpt), clips=str(clips), resolution="16x24",
                              frames=9, window=8, device="cpu"))  # fmt: skip
    assert r24["mean"]["psnr"] == pytest.approx(ref["mean"]["psnr"], abs=1e-9)
    assert r24["mean"]["ssim"] == pytest.approx(ref["mean"]["ssim"], abs=1e-9)
    # and an independent PSNR: numpy float64 per frame, then the mean
    vae = MUGVAE.from_pretrained(ckpt)
    x = load_clip((clips / "v0.mp4").read_bytes(), 9, [(16, 24)])[None]
    with torch.no_grad():
        y = vae.decode(vae.encode(x), window=8).clamp(-1, 1)
    a = (x[0].double().numpy() + 1) / 2
    b = (y[0].double().numpy() + 1) / 2
    mse = ((a - b) ** 2).mean(axis=(0, 2, 3))
    assert r24["clips"][0]["psnr"] == pytest.approx(float(np.mean(10 * np.log10(1 / mse))), 1e-6)
    md = (out / "vae.md").read_text()
    assert "| 16x24 (16x24) | 2 |" in md and "## 16x16" in md


def test_missing_paths_are_one_line_errors_naming_them(setup, tmp_path, capsys):
    clips, ckpt = setup
    opts = ["--frames", "9", "--output", str(tmp_path / "o")]
    cases = [
        ([str(ckpt), "--clips", str(clips), "--lpips-weights", str(tmp_path / "lpips.safetensors")],
         "lpips.safetensors"),
        ([str(tmp_path / "no-vae"), "--clips", str(clips)], "no-vae"),
        ([str(ckpt), "--clips", str(tmp_path / "no-clips")], "no-clips"),
        ([str(ckpt), "--clips", str(clips), "--resolutions", "17x16"], "17x16"),
    ]  # fmt: skip
    for args, needle in cases:
        rc = main(["eval", "vae", *args, *opts])
        err = capsys.readouterr().err
        assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, (args, err)
