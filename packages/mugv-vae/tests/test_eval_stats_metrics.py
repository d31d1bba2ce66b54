"""Metrics against independent references; eval and stats commands; LPIPS; losses; tiling."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from mugv_vae.cli import main
from mugv_vae.metrics import psnr, ssim
from mugv_vae.model import MUGVAE
from mugv_vae.train.losses import adaptive_l1_weight, spatial_laplacian
from mugv_vae.train.lpips import LPIPS


def _ssim_numpy(x: np.ndarray, y: np.ndarray) -> float:
    """Direct SSIM of one 2D image pair in [0, 1]: explicit loops over valid 11x11 windows."""
    coords = np.arange(11) - 5.0
    g = np.exp(-(coords**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            a, b = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb = (w * a * a).sum() - ma**2, (w * b * b).sum() - mb**2
            cov = (w * a * b).sum() - ma * mb
            vals.append(
                ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
            )
    return float(np.mean(vals))


def test_psnr_and_ssim_match_independent_references():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 1, 16, 20, generator=g) * 2 - 1
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    mse = (((x.double() + 1) / 2 - (y.double() + 1) / 2) ** 2).mean().item()
    assert float(psnr(y, x)) == pytest.approx(10 * math.log10(1 / mse), rel=1e-9)
    ref = _ssim_numpy(
        ((x[0, 0, 0] + 1) / 2).double().numpy(), ((y[0, 0, 0] + 1) / 2).double().numpy()
    )
    assert float(ssim(y, x)) == pytest.approx(ref, rel=1e-9)
    assert float(ssim(x, x)) == pytest.approx(1.0)


def test_adaptive_l1_weight_emphasises_moving_edges():
    static = torch.zeros(1, 3, 5, 16, 16)
    static[..., 4:8, 4:8] = 1.0
    torch.testing.assert_close(adaptive_l1_weight(static, 1.0), torch.ones(1, 1, 5, 16, 16))
    moving = torch.zeros(1, 3, 5, 16, 16)
    for t in range(5):
        moving[:, :, t, 4:8, 2 + 2 * t : 6 + 2 * t] = 1.0
    w = adaptive_l1_weight(moving, 1.0)
    assert w[:, :, 0].eq(1).all()  # frame 0 has no temporal difference
    assert w[0, 0, 2, 5, 4 + 2].item() > 1.5  # leading edge of the moving square
    assert w[0, 0, 2, 14, 14].item() == pytest.approx(1.0)  # far background
    # Laplacian against an explicit float64 stencil in the interior.
    x = torch.rand(1, 1, 1, 6, 6, dtype=torch.float64)
    lap = spatial_laplacian(x)[0, 0, 0]
    i, j = 2, 3
    expected = (
        x[0, 0, 0, i - 1, j]
        + x[0, 0, 0, i + 1, j]
        + x[0, 0, 0, i, j - 1]
        + x[0, 0, 0, i, j + 1]
        - 4 * x[0, 0, 0, i, j]
    )
    assert float(lap[i, j]) == pytest.approx(float(expected))


def test_lpips_loads_local_weights_and_measures_distance(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ref = LPIPS()
    state = {k: v for k, v in ref.state_dict().items() if k.startswith("features.")}
    state.update({f"lin{i}.model.1.weight": ref.lins[i].weight.abs() for i in range(5)})
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "lpips.safetensors"))
    model = LPIPS.from_file(tmp_path / "lpips.safetensors")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(model(x, x), torch.zeros(2))
    assert (model(x, x.flip(-1)) > 0).all()
    with pytest.raises(ValueError, match="lack"):
        save_file(
            {"features.0.weight": state["features.0.weight"]}, str(tmp_path / "bad.safetensors")
        )
        LPIPS.from_file(tmp_path / "bad.safetensors")


def test_tiled_apply_equals_untiled_for_a_local_operator():
    from fractions import Fraction

    from mugv_vae.model.tiling import tiled_apply

    torch.manual_seed(0)
    # A local operator (receptive field 3 px in, stride 8): a conv then 8x average pooling.
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def down(x):
        return torch.nn.functional.avg_pool2d(conv(x), 8)

    def up(z):
        return conv(torch.nn.functional.interpolate(z[:, :3], scale_factor=8.0))

    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        for fn, inp, tile, overlap, scale, align in (
            (down, x, 32, 16, Fraction(1, 8), 8),
            (up, torch.rand(2, 4, 8, 12), 4, 2, 8, 1),
        ):
            y_tiled, y = tiled_apply(fn, inp, tile, overlap, scale, align=align), fn(inp)
            err = (y_tiled - y).abs()
            # Only the zero padding at inner tile borders differs, and the blend damps it.
            assert err.mean() < 0.01 * y.abs().mean()
            assert err.max() < 0.05 * y.abs().max()


def test_tiled_vae_encode_decode_shapes_and_single_tile_identity(tiny_vae, make_video):
    # GroupNorm statistics and mid-block attention are per tile, so tiled results of the VAE
    # approximate the untiled ones; one tile covering the frame is exactly the untiled path.
    video = make_video(t=9, h=64, w=96)
    with torch.no_grad():
        z = tiny_vae.encode(video)
        z_tiled = tiny_vae.encode(video, tile=48, tile_overlap=24)
        assert z_tiled.shape == z.shape
        assert torch.equal(tiny_vae.encode(video, tile=96, tile_overlap=8), z)
        x_tiled = tiny_vae.decode(z, tile=6, tile_overlap=3)
        assert x_tiled.shape == video.shape and torch.isfinite(x_tiled).all()
    with pytest.raises(ValueError, match="overlap"):
        tiny_vae.encode(video, tile=48, tile_overlap=48)


def test_eval_and_stats_commands(tiny_checkpoint, clip_dataset, tmp_path, capsys):
    out = tmp_path / "eval.json"
    with pytest.warns(UserWarning, match="LPIPS skipped"):
        code = main(
            [
                "eval",
                "--checkpoint",
                str(tiny_checkpoint),
                "--clips",
                str(clip_dataset),
                "--resolution",
                "32x32",
                "--frames",
                "9",
                "--device",
                "cpu",
                "--output",
                str(out),
            ]
        )
    assert code == 0
    result = json.loads(out.read_text())
    assert {r["clip"] for r in result["clips"]} == {"bikes", "carphone_pristine", "bigbuckbunny"}
    assert result["resolution"] == "32x32" and result["frames"] == 9
    assert "| **mean** |" in capsys.readouterr().out
    # stats: measured on raw latents; written into a copy of the checkpoint.
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    MUGVAE.from_pretrained(ckpt).save_pretrained(ckpt, extra={"train_step": 7})
    assert (
        main(
            [
                "stats",
                "--checkpoint",
                str(ckpt),
                "--clips",
                str(clip_dataset),
                "--resolution",
                "32x32",
                "--frames",
                "9",
                "--write",
            ]
        )
        == 0
    )
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model = MUGVAE.from_pretrained(ckpt)
    torch.testing.assert_close(model.latent_mean, torch.tensor(stats["mean"], dtype=torch.float32))
    assert stats["positions"] == 3 * 2 * 4 * 4
    from mugv_formats import VAE_CHECKPOINT_FORMAT, read_weights_config

    extra = read_weights_config(ckpt, format=VAE_CHECKPOINT_FORMAT)["extra"]
    assert extra["train_step"] == 7  # the checkpoint's own entries stay
    np.testing.assert_allclose(extra["latent_std"], stats["std"], rtol=1e-6)
    # After storing the stats, encoded latents are standardised on that data.
    from mugv_vae.train.data import ClipSource

    src = ClipSource(clip_dataset)
    zs = torch.cat(
        [
            model.encode(src.load(i, 9, [(32, 32)]).unsqueeze(0)).transpose(0, 1).reshape(24, -1)
            for i in range(len(src))
        ],
        dim=1,
    )
    torch.testing.assert_close(zs.mean(dim=1), torch.zeros(24), atol=1e-4, rtol=0)
    torch.testing.assert_close(zs.std(dim=1, unbiased=False), torch.ones(24), atol=1e-3, rtol=0)
