"""Behaviour of the VAE model: the 1+8k rule, minimal encoding, windows, normalisation."""

from __future__ import annotations

import pytest
import torch
from mugv_vae.config import VAEConfig, VAERuntime, preset, tiny_config
from mugv_vae.model import MUGVAE, latent_frames


@pytest.mark.parametrize(("frames", "latents"), [(1, 1), (9, 2), (17, 3), (33, 5)])
def test_one_plus_8k_frames_give_one_plus_k_latents(tiny_vae, make_video, frames, latents):
    with torch.no_grad():
        z = tiny_vae.encode(make_video(t=frames, h=32, w=48))
        assert z.shape == (1, 24, latents, 4, 6)
        video = tiny_vae.decode(z)
    assert video.shape == (1, 3, frames, 32, 48)


@pytest.mark.parametrize("frames", [0, 2, 8, 16, 18])
def test_other_lengths_are_refused(frames):
    with pytest.raises(ValueError, match="1 \\+ 8k"):
        latent_frames(frames)


def test_bad_inputs_raise_clear_errors(tiny_vae, make_video):
    video = make_video(t=9)
    with pytest.raises(ValueError, match="floating-point"):
        tiny_vae.encode((video * 127).to(torch.uint8))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        tiny_vae.encode(video * 127.5 + 127.5)
    with pytest.raises(ValueError, match="multiples of 8"):
        tiny_vae.encode(video[..., :30])
    with pytest.raises(ValueError, match="shape"):
        tiny_vae.encode(video[:, :2])
    with pytest.raises(ValueError, match="1 \\+ 8k"):
        tiny_vae.encode(video[:, :, :8])
    with pytest.warns(UserWarning, match=r"\[0, 1\]"):
        tiny_vae.encode(video.abs())


def test_minimal_encoding_each_latent_sees_only_its_chunk(tiny_vae, make_video):
    video = make_video(t=25)  # latents: [frame 0], [1..8], [9..16], [17..24]
    with torch.no_grad():
        z = tiny_vae.encode(video)
        changed = video.clone()
        changed[:, :, 9:17] = make_video(t=8 + 1, seed=7)[:, :, :8]
        z2 = tiny_vae.encode(changed)
    assert torch.equal(z[:, :, [0, 1, 3]], z2[:, :, [0, 1, 3]])  # bit-identical
    assert not torch.allclose(z[:, :, 2], z2[:, :, 2])


def test_latent_zero_is_a_still_image_latent(tiny_vae, make_video):
    video = make_video(t=17)
    with torch.no_grad():
        z_clip = tiny_vae.encode(video)
        z_image = tiny_vae.encode(video[:, :, :1])
        # The same frame repeated 8 times is what latent 0 encodes.
        z_still = tiny_vae.encode(video[:, :, :1].expand(-1, -1, 9, -1, -1).contiguous())
    torch.testing.assert_close(z_clip[:, :, :1], z_image, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z_still[:, :, 1:], z_image, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [1, 4, 8])
def test_decoder_windows_are_independent(tiny_vae, make_video, window):
    with torch.no_grad():
        z = tiny_vae.encode(make_video(t=1 + 8 * 8))  # 9 latents
        x = tiny_vae.decode(z, window=window)
        z2 = z.clone()
        z2[:, :, -1] += 1.0  # the last latent lives in the last window
        x2 = tiny_vae.decode(z2, window=window)
    last_window_start = ((9 - 1) // window) * window  # latents in the last window
    first_changed_frame = max(0, 8 * last_window_start - 7)
    assert x.shape == (1, 3, 65, 32, 32)
    assert torch.equal(x[:, :, :first_changed_frame], x2[:, :, :first_changed_frame])
    assert not torch.allclose(x[:, :, first_changed_frame:], x2[:, :, first_changed_frame:])


def test_normalisation_is_applied_exactly_once(tiny_vae, make_video):
    c = tiny_vae.config.latent_channels
    mean, std = torch.linspace(-1, 1, c), torch.linspace(0.5, 2.0, c)
    tiny_vae.set_latent_stats(mean, std)
    video = make_video(t=9)
    with torch.no_grad():
        raw = tiny_vae.encode_raw(video)
        z = tiny_vae.encode(video)
        expected = (raw.double() - mean.double().view(1, -1, 1, 1, 1)) / std.double().view(
            1, -1, 1, 1, 1
        )
        torch.testing.assert_close(z.double(), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            tiny_vae.decode(z), tiny_vae.decode_raw(raw), rtol=1e-4, atol=1e-4
        )
    with pytest.raises(ValueError, match="positive"):
        tiny_vae.set_latent_stats(mean, -std)
    with pytest.raises(ValueError, match="24 entries"):
        tiny_vae.set_latent_stats(mean[:3], std[:3])


def test_micro_batching_does_not_change_results(tiny_vae, make_video):
    video = make_video(b=2, t=17)
    with torch.no_grad():
        z = tiny_vae.encode(video)
        x = tiny_vae.decode(z, window=1)
        tiny_vae.frame_batch_size, tiny_vae.chunk_batch_size = 3, 2
        torch.testing.assert_close(tiny_vae.encode(video), z, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tiny_vae.decode(z, window=1), x, rtol=1e-5, atol=1e-5)


def test_sampled_latents_follow_the_posterior(tiny_vae, make_video):
    video = make_video(t=9)
    with torch.no_grad():
        post = tiny_vae.encode_posterior(video)
        g = torch.Generator().manual_seed(3)
        sampled = tiny_vae.encode_raw(video, sample=True, generator=g)
    assert not torch.equal(sampled, post.mode())
    noise = (sampled - post.mean) / post.std
    assert abs(noise.mean().item()) < 0.2 and abs(noise.std().item() - 1) < 0.2


def test_presets_and_config_validation():
    assert preset("mugv") == VAEConfig()
    assert preset("tiny") == tiny_config()
    with pytest.raises(ValueError, match="unknown VAE preset"):
        preset("huge")
    with pytest.raises(ValueError, match="channel_multipliers"):
        VAEConfig.model_validate({"temporal": {"channel_multipliers": [1, 2]}})


def test_mugv_preset_matches_the_released_architecture_size():
    # Parameter count of the released model: trunk (SDXL VAE minus its 4-channel bottleneck)
    # plus temporal encoder/decoder; counted from the original's construction.
    with torch.device("meta"):
        model = MUGVAE(preset("mugv"))
    n_temporal = sum(
        p.numel()
        for name, p in model.named_parameters()
        if name.startswith(("temporal_encoder", "temporal_decoder"))
    )
    assert model.config.trunk.feature_channels == 512
    assert n_temporal > 100_000_000


def test_fused_group_norm_silu_switch_matches_the_torch_path(make_video, monkeypatch):
    mk = pytest.importorskip("mugv_kernels")
    torch.manual_seed(0)
    plain = MUGVAE(tiny_config()).eval()
    fused = MUGVAE(tiny_config(), VAERuntime(fused_group_norm_silu=True)).eval()
    fused.load_state_dict(plain.state_dict())
    video = make_video(t=9)
    calls = []
    real = mk.group_norm_silu
    monkeypatch.setattr(mk, "group_norm_silu", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        plain.encode(video)
        assert not calls
        fused.encode(video)
    # trunk: 1 res-block in each of 4 down blocks + 2 in the mid block, 2 norms each;
    # temporal encoder: conv stages and mid (5 res-blocks) + the output norm.
    assert len(calls) == 2 * (4 + 2) + 2 * 5 + 1
    with torch.no_grad():
        z = plain.encode(video)
        torch.testing.assert_close(fused.encode(video), z, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fused.decode(z), plain.decode(z), rtol=1e-4, atol=1e-5)


def test_unified_variant_keeps_the_rules(make_video, tmp_path):
    torch.manual_seed(0)
    model = MUGVAE(preset("unified-tiny")).eval()
    video = make_video(t=17, h=32, w=48)
    with torch.no_grad():
        z = model.encode(video)
        assert z.shape == (1, 24, 3, 4, 6)
        assert model.decode(z, window=2).shape == video.shape
        changed = video.clone()
        changed[:, :, 1:9] = -changed[:, :, 1:9]
        z2 = model.encode(changed)
    assert torch.equal(z[:, :, [0, 2]], z2[:, :, [0, 2]])  # minimal encoding
    assert not torch.allclose(z[:, :, 1], z2[:, :, 1])
    model.save_pretrained(tmp_path / "u")
    again = MUGVAE.from_pretrained(tmp_path / "u")
    assert again.config.variant == "unified"
    with torch.no_grad():
        assert torch.equal(again.encode(video), z)
    # 2D and 3D blocks alternate inside every stage.
    kernels = [b.conv1.conv.kernel_size for b in model.temporal_encoder.stages[0]]
    assert kernels == [(1, 3, 3), (3, 3, 3)]


def test_gradient_checkpointing_gives_the_same_gradients(make_video):
    torch.manual_seed(0)
    plain = MUGVAE(tiny_config())
    ckpt = MUGVAE(tiny_config(), VAERuntime(gradient_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    video = make_video(t=9)
    for model in (plain, ckpt):
        recon, post = model(video, window=2, sample=False)
        (recon.pow(2).mean() + post.kl().mean() * 1e-3).backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
