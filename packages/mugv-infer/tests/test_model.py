"""The plain-PyTorch MUG-DiT: diffusers save/load, export round trip and its errors, RoPE
positions, step cache, bench smoke run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mugv_infer_fixtures import tiny_transformer


def _inputs(seed=0, b=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 24, 3, 4, 6, generator=g)
    text = torch.randn(b, 5, 32, generator=g)
    mask = torch.ones(b, 5, dtype=torch.bool)
    mask[1, 3:] = False
    return x, torch.rand(b, generator=g), text, mask


def test_save_pretrained_from_pretrained_round_trip(tmp_path):
    from mugv_infer.models import MUGDiTTransformer3DModel

    model = tiny_transformer()
    model.save_pretrained(tmp_path / "t")
    loaded = MUGDiTTransformer3DModel.from_pretrained(tmp_path / "t").eval()
    x, s, text, mask = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(x, s, text, mask).sample, loaded(x, s, text, mask).sample)
    assert loaded.config.num_layers == 2 and loaded.config.text_dim == 32


def test_export_round_trip_and_errors_name_the_tensor(tmp_path):
    import mugv_formats as mf
    from mugv_infer.models import MUGDiTTransformer3DModel

    model = tiny_transformer()
    model.save_export(tmp_path / "e")
    loaded = MUGDiTTransformer3DModel.from_export(tmp_path / "e", torch_dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16
    state = model.export_state_dict()
    cfg = dict(model.config)
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    missing = {k: v for k, v in state.items() if k != "blocks.1.mlp.fc2.weight"}
    mf.save_weights_folder(
        tmp_path / "m", format=mf.DIT_EXPORT_FORMAT, architecture="MUGDiT", config=cfg,
        state_dict=missing,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"missing \['blocks.1.mlp.fc2.weight'\]"):
        MUGDiTTransformer3DModel.from_export(tmp_path / "m")
    wrong = {**state, "t_block.bias": torch.zeros(5)}
    mf.save_weights_folder(
        tmp_path / "w", format=mf.DIT_EXPORT_FORMAT, architecture="MUGDiT", config=cfg,
        state_dict=wrong,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"t_block.bias: shape \(5,\), expected"):
        MUGDiTTransformer3DModel.from_export(tmp_path / "w")
    mf.save_weights_folder(
        tmp_path / "a", format=mf.DIT_EXPORT_FORMAT, architecture="Other", config=cfg,
        state_dict=state,
    )  # fmt: skip
    with pytest.raises(ValueError, match="architecture 'Other'"):
        MUGDiTTransformer3DModel.from_export(tmp_path / "a")


def test_padded_text_equals_unpadded():
    model = tiny_transformer()
    x, s, text, mask = _inputs()
    with torch.no_grad():
        both = model(x, s, text, mask).sample
        alone = model(x[1:], s[1:], text[1:, :3]).sample
    torch.testing.assert_close(both[1:], alone, rtol=1e-5, atol=1e-5)


def test_bad_inputs_name_the_value():
    model = tiny_transformer()
    x, s, text, mask = _inputs()
    with pytest.raises(ValueError, match=r"hidden_states must be \[B, 24"):
        model(x[:, :16], s, text, mask)
    with pytest.raises(ValueError, match="not divisible by patch"):
        model(x[..., :3, :], s, text, mask)
    with pytest.raises(ValueError, match="encoder_hidden_states must be"):
        model(x, s, text[..., :8], mask)
    mask[0] = False
    with pytest.raises(ValueError, match="at least one unmasked"):
        model(x, s, text, mask)


def test_step_cache_zero_threshold_is_exact_and_positive_threshold_skips(parts):
    from mugv_infer import MUGVPipeline

    pipe = MUGVPipeline.from_parts(parts["model"], parts["vae"], parts["t5"])
    pipe.set_progress_bar_config(disable=True)
    lat = torch.randn(pipe.latent_shape(1, 32, 32, 9), generator=torch.Generator().manual_seed(0))
    kw = dict(height=32, width=32, num_frames=9, num_inference_steps=6, output_type="latent")
    exact = pipe("a cat", latents=lat, **kw)
    none = pipe("a cat", latents=lat, step_cache_threshold=1e-9, **kw)
    cached = pipe("a cat", latents=lat, step_cache_threshold=10.0, **kw)
    assert exact.step_cache_skipped == none.step_cache_skipped == 0
    torch.testing.assert_close(none.frames, exact.frames, rtol=0, atol=0)
    assert cached.step_cache_skipped > 0
    assert (cached.frames - exact.frames).abs().amax() > 0


@pytest.mark.slow
def test_benchmark_script_smoke_run_on_cpu(tmp_path):
    script = Path(__file__).parents[1] / "benchmarks" / "bench_generate.py"
    cmd = [
        sys.executable, str(script), "--device", "cpu", "--preset", "debug", "--height", "32",
        "--width", "48", "--frames", "9", "--steps", "1", "--e2e-steps", "3",
        "--step-cache", "5", "--offload", "--vae-tile", "2", "--out", str(tmp_path / "b.json"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    res = json.loads((tmp_path / "b.json").read_text())
    assert res["dit"]["ours_vs_reference_rel_l2"] < 1e-5
    assert res["e2e"]["ours+cache"]["skipped_steps"] >= 1


def test_fused_ops_give_the_same_prediction():
    """mugv-kernels' ops (their PyTorch reference path on CPU) wired into the block."""
    model = tiny_transformer()
    x, s, text, mask = _inputs()
    noisy = torch.ones(2, 3, dtype=torch.bool)
    noisy[0, 0] = False
    with torch.no_grad():
        plain = model(x, s, text, mask, noisy_frames=noisy).sample
        model.set_fused_ops(True)
        fused = model(x, s, text, mask, noisy_frames=noisy).sample
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
