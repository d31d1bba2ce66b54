"""The one-step SDEdit enhancer and its peft LoRA weights."""

from __future__ import annotations

import pytest
import torch
from mugv_infer_fixtures import FRAMES, HEIGHT, WIDTH


@pytest.fixture
def enhancer(parts):
    from mugv_infer.enhancer import MUGVEnhancePipeline

    p = MUGVEnhancePipeline.from_parts(parts["model"], parts["vae"], parts["t5"])
    p.set_progress_bar_config(disable=True)
    return p


def _video(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, FRAMES, HEIGHT, WIDTH, generator=g) * 2 - 1


def test_enhancer_is_one_step_from_s_0_3(enhancer):
    """The sampler plans exactly one Euler step, from s = 0.3 (unshifted) to 0."""
    from mugv_infer.scheduler import MUGVFlowEulerScheduler

    s = MUGVFlowEulerScheduler()
    s.set_timesteps(1, sigma_max=0.3)
    assert s.timesteps.tolist() == pytest.approx([0.3])
    assert s.sigmas.tolist() == pytest.approx([0.3, 0.0])
    out = enhancer(_video(), prompt="a cat", generator=torch.Generator().manual_seed(0))
    assert out.frames.shape == (1, FRAMES, HEIGHT, WIDTH, 3)


def test_enhancer_strength_and_guidance_are_used(enhancer):
    kw = dict(prompt="a cat", output_type="latent")
    a = enhancer(_video(), generator=torch.Generator().manual_seed(0), **kw).frames
    b = enhancer(
        _video(), generator=torch.Generator().manual_seed(0), guidance_scale=1.0, **kw
    ).frames
    c = enhancer(_video(), generator=torch.Generator().manual_seed(0), strength=0.6, **kw).frames
    assert (a - b).abs().amax() > 1e-5 and (a - c).abs().amax() > 1e-5
    with pytest.raises(ValueError, match="strength"):
        enhancer(_video(), strength=0.0, **kw)
    with pytest.raises(ValueError, match="num_frames=8"):
        enhancer(_video()[:, :8], **kw)


def test_lora_round_trip_through_peft(enhancer, parts, tmp_path):
    from mugv_infer.enhancer import add_lora, load_lora, save_lora
    from mugv_infer_fixtures import tiny_transformer

    kw = dict(prompt="a cat", output_type="latent")
    base = enhancer(_video(), generator=torch.Generator().manual_seed(0), **kw).frames
    # a trained adapter: random non-zero LoRA weights
    donor = add_lora(tiny_transformer(), rank=4, alpha=8.0)
    with torch.no_grad():
        for name, p in donor.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.2)
    save_lora(donor, tmp_path / "lora")
    assert (tmp_path / "lora" / "adapter_config.json").is_file()
    load_lora(enhancer.transformer, tmp_path / "lora")
    adapted = enhancer(_video(), generator=torch.Generator().manual_seed(0), **kw).frames
    assert (adapted - base).abs().amax() > 1e-4
    # the adapter loaded is the donor's: same forward as the donor model
    x = torch.randn(1, 24, 2, 4, 4)
    text = torch.randn(1, 3, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            enhancer.transformer(x, torch.tensor([0.3]), text).sample,
            donor(x, torch.tensor([0.3]), text).sample,
            rtol=1e-5,
            atol=1e-5,
        )
    # fused: merged into the base weights, same output
    fused = load_lora(tiny_transformer(), tmp_path / "lora", fuse=True)
    with torch.no_grad():
        torch.testing.assert_close(
            fused(x, torch.tensor([0.3]), text).sample,
            donor(x, torch.tensor([0.3]), text).sample,
            rtol=1e-4,
            atol=1e-5,
        )


def test_lora_folder_errors_name_the_folder(tmp_path):
    from mugv_infer.enhancer import load_lora
    from mugv_infer_fixtures import tiny_transformer

    with pytest.raises(ValueError, match="adapter_config.json"):
        load_lora(tiny_transformer(), tmp_path)
