"""AutoencoderMUGV (mugv-vae's VAE as a diffusers model) against mugv-vae itself: every
number must be mugv-vae's, bit for bit."""

from __future__ import annotations

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from mugv_infer.models.vae import AutoencoderMUGV
from mugv_vae.config import tiny_config
from mugv_vae.model import MUGVAE


def _vae(seed: int = 0) -> MUGVAE:
    torch.manual_seed(seed)
    vae = MUGVAE(tiny_config()).eval()
    vae.set_latent_stats(torch.linspace(-0.5, 0.5, 24), torch.linspace(0.5, 2.0, 24))
    return vae


def _video(b: int = 2, frames: int = 9, h: int = 32, w: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(b, 3, frames, h, w, generator=g) * 2 - 1


@torch.no_grad()
def test_encode_decode_equal_mugv_vae_exactly():
    ref = _vae()
    ours = AutoencoderMUGV.from_mugv_vae(ref)
    x = _video()
    dist = ours.encode(x).latent_dist
    assert isinstance(dist, DiagonalGaussianDistribution)
    assert torch.equal(dist.mode(), ref.encode_raw(x))
    assert torch.equal(ours.normalize_latents(dist.mode()), ref.encode(x))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(dist.sample(g1), ref.encode_raw(x, sample=True, generator=g2))
    z = ref.encode(x)
    assert torch.equal(ours.decode(ours.denormalize_latents(z)).sample, ref.decode(z))
    (video,) = ours.decode(ref.denormalize(z), return_dict=False)
    assert video.shape == x.shape and torch.equal(video, ref.decode(z))


@torch.no_grad()
def test_tiling_and_slicing_are_mugv_vaes():
    ref = _vae()
    ours = AutoencoderMUGV.from_mugv_vae(ref)
    x = _video(h=48, w=64)
    z = ref.encode_raw(x)
    ours.enable_tiling(4, 2)  # 32-pixel tiles, 16 pixels overlap: several tiles each way
    assert torch.equal(ours.encode(x).latent_dist.mode(), ref.encode_raw(x, tile=32, tile_overlap=16))
    assert torch.equal(ours.decode(z).sample, ref.decode_raw(z, tile=4, tile_overlap=2))
    assert not torch.equal(ours.decode(z).sample, ref.decode_raw(z))  # tiles really used
    ours.disable_tiling()
    ours.enable_slicing()
    assert torch.equal(ours.decode(z).sample, ref.decode_raw(z))
    assert torch.equal(ours.encode(x).latent_dist.mode(), z)


@torch.no_grad()
def test_save_pretrained_round_trip_keeps_weights_stats_and_id(tmp_path):
    ref = _vae()
    ours = AutoencoderMUGV.from_mugv_vae(ref, checkpoint_id="mugv-vae:0123456789abcdef")
    ours.save_pretrained(tmp_path / "vae")
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = AutoencoderMUGV.from_pretrained(tmp_path / "vae")
    assert loaded.config.checkpoint_id == "mugv-vae:0123456789abcdef"
    assert loaded.model.config == ref.config
    for (name, a), (_, b) in zip(ref.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), name
    x = _video(b=1)
    assert torch.equal(loaded.encode(x).latent_dist.mode(), ref.encode_raw(x))
    half = AutoencoderMUGV.from_pretrained(tmp_path / "vae", torch_dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    assert torch.equal(half.latent_std, ref.latent_std.bfloat16())


def test_from_checkpoint_reads_a_mugv_vae_folder(tmp_path):
    from mugv_vae.checkpoint import checkpoint_id

    ref = _vae()
    ref.save_pretrained(tmp_path / "ckpt")
    ours = AutoencoderMUGV.from_checkpoint(tmp_path / "ckpt")
    assert ours.config.checkpoint_id == checkpoint_id(tmp_path / "ckpt")
    assert ours.config.latent_channels == 24 and ours.to_mugv_vae().config == ref.config
    assert torch.equal(ours.latent_mean, ref.latent_mean)
