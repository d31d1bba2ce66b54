"""Import of the released MUG-V VAE weights through the explicit name mapping.

The original's parameter names and shapes are rebuilt here from its architecture
(Shopee-MUG/MUG-V ``mug_v/encoder/vae/vae.py`` and ``vae_temporal.py``), and a small
float64 functional re-implementation of its forward pass (written from that architecture,
keyed by the original names) is the reference our model must reproduce.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from mugv_vae.config import VAEConfig, mugv_config, tiny_config
from mugv_vae.import_original import convert_original_state_dict, import_original, map_original_key
from mugv_vae.model import MUGVAE


def _res(names, prefix, cin, cout):
    names[f"{prefix}.norm1.weight"] = (cin,)
    names[f"{prefix}.norm1.bias"] = (cin,)
    names[f"{prefix}.conv1.conv.weight"] = (cout, cin, 3, 3, 3)
    names[f"{prefix}.norm2.weight"] = (cout,)
    names[f"{prefix}.norm2.bias"] = (cout,)
    names[f"{prefix}.conv2.conv.weight"] = (cout, cout, 3, 3, 3)
    if cin != cout:
        names[f"{prefix}.conv3.conv.weight"] = (cout, cin, 1, 1, 1)


def original_shapes(cfg: VAEConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of ``MUGAutoencoderPipeline.state_dict()`` for this config."""
    t, z, c = cfg.temporal, cfg.latent_channels, cfg.trunk.feature_channels
    f, mults, nres = t.filters, t.channel_multipliers, t.num_res_blocks
    s: dict[str, tuple[int, ...]] = {}
    e = "temporal_vae.encoder"
    s[f"{e}.conv_in.conv.weight"] = (f, c, 3, 3, 3)
    prev = f
    for i, m in enumerate(mults):
        for j in range(nres):
            _res(s, f"{e}.block_res_blocks.{i}.{j}", prev, f * m)
            prev = f * m
        if i < len(mults) - 1:
            s[f"{e}.conv_blocks.{i}.conv.weight"] = (prev, prev, 3, 3, 3)
            s[f"{e}.conv_blocks.{i}.conv.bias"] = (prev,)
    for j in range(nres):
        _res(s, f"{e}.res_blocks.{j}", prev, prev)
    s[f"{e}.norm1.weight"] = s[f"{e}.norm1.bias"] = (prev,)
    s[f"{e}.conv2.conv.weight"], s[f"{e}.conv2.conv.bias"] = (2 * z, prev, 1, 1, 1), (2 * z,)
    s["temporal_vae.quant_conv.conv.weight"] = (2 * z, 2 * z, 1, 1, 1)
    s["temporal_vae.quant_conv.conv.bias"] = (2 * z,)
    s["temporal_vae.post_quant_conv.conv.weight"] = (z, z, 1, 1, 1)
    s["temporal_vae.post_quant_conv.conv.bias"] = (z,)
    d = "temporal_vae.decoder"
    top = f * mults[-1]
    s[f"{d}.conv1.conv.weight"], s[f"{d}.conv1.conv.bias"] = (top, z, 3, 3, 3), (top,)
    for j in range(nres):
        _res(s, f"{d}.res_blocks.{j}", top, top)
    _res(s, f"{d}.upsample_block", top, top)
    prev, dec_down = top, (False, True, True)
    for i in reversed(range(len(mults))):
        for j in range(nres):
            _res(s, f"{d}.block_res_blocks.{i}.{j}", prev, f * mults[i])
            prev = f * mults[i]
        if i > 0 and dec_down[i - 1]:
            s[f"{d}.conv_blocks.{i - 1}.conv.weight"] = (2 * prev, prev, 3, 3, 3)
            s[f"{d}.conv_blocks.{i - 1}.conv.bias"] = (2 * prev,)
    s[f"{d}.norm1.weight"] = s[f"{d}.norm1.bias"] = (prev,)
    s[f"{d}.conv_out.conv.weight"], s[f"{d}.conv_out.conv.bias"] = (c, prev, 3, 3, 3), (c,)
    with torch.device("meta"):
        spatial = _original_spatial(cfg)
    for k, v in spatial.state_dict().items():
        s[f"spatial_vae.module.{k}"] = tuple(v.shape)
    s["shift"] = s["scale"] = (1, z, 1, 1, 1)
    s["logvar"] = ()
    return s


def _original_spatial(cfg: VAEConfig) -> AutoencoderKL:
    tr = cfg.trunk
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=tr.block_out_channels,
        layers_per_block=tr.layers_per_block,
        norm_num_groups=tr.norm_num_groups,
        latent_channels=4,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=tr.mid_block_add_attention,
    )


def random_original(cfg: VAEConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in original_shapes(cfg).items():
        if k == "scale":
            out[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith(("norm1.weight", "norm2.weight")):
            out[k] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod()) if len(shape) > 1 else 1)
            out[k] = torch.randn(shape, generator=g) / fan_in**0.5
    return out


# ---------------------------------------------------------------- reference forward (float64)
def _conv(sd, name, x, time_stride=1):
    w, b = sd[f"{name}.conv.weight"], sd.get(f"{name}.conv.bias")
    k = w.shape[2]
    tp = (k - 1) + (1 - time_stride)
    x = F.pad(x, (k // 2, k // 2, k // 2, k // 2, tp // 2, tp - tp // 2))
    return F.conv3d(x, w, b, stride=(time_stride, 1, 1))


def _gn(sd, name, x, groups):
    return F.group_norm(x, groups, sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-5)


def _resblock(sd, p, x, groups):
    h = _conv(sd, f"{p}.conv1", F.silu(_gn(sd, f"{p}.norm1", x, groups)))
    h = _conv(sd, f"{p}.conv2", F.silu(_gn(sd, f"{p}.norm2", h, groups)))
    return h + (_conv(sd, f"{p}.conv3", x) if f"{p}.conv3.conv.weight" in sd else x)


def reference_encode(sd, cfg: VAEConfig, video):
    """Original pipeline encode with the posterior mode: per-frame spatial encoder
    x 0.18215, first-frame padding to a multiple of 8, 8-frame chunks through the temporal
    encoder, (z - shift) / scale."""
    t, g = cfg.temporal, cfg.temporal.num_groups
    spatial = _original_spatial(cfg).double()
    spatial.load_state_dict(
        {k[len("spatial_vae.module.") :]: v for k, v in sd.items() if k.startswith("spatial_vae")}
    )
    b, _, n, h, w = video.shape
    x = video.transpose(1, 2).reshape(b * n, 3, h, w)
    enc = spatial.encoder
    x = enc.conv_in(x)
    for blk in enc.down_blocks:
        x = blk(x)
    x = enc.mid_block(x) * 0.18215
    x = x.view(b, n, *x.shape[1:]).transpose(1, 2)
    x = torch.cat([x[:, :, :1].repeat(1, 1, 7, 1, 1), x], dim=2)
    k = x.shape[2] // 8
    x = (
        x.view(b, x.shape[1], k, 8, *x.shape[-2:])
        .transpose(1, 2)
        .reshape(b * k, -1, 8, *x.shape[-2:])
    )
    e = "temporal_vae.encoder"
    x = _conv(sd, f"{e}.conv_in", x)
    for i in range(len(t.channel_multipliers)):
        for j in range(t.num_res_blocks):
            x = _resblock(sd, f"{e}.block_res_blocks.{i}.{j}", x, g)
        if i < len(t.channel_multipliers) - 1:
            x = _conv(sd, f"{e}.conv_blocks.{i}", x, time_stride=2)
    for j in range(t.num_res_blocks):
        x = _resblock(sd, f"{e}.res_blocks.{j}", x, g)
    x = _conv(sd, f"{e}.conv2", F.silu(_gn(sd, f"{e}.norm1", x, g)))
    x = _conv(sd, "temporal_vae.quant_conv", x)
    mean = x[:, : cfg.latent_channels]
    mean = (
        mean.view(b, k, *mean.shape[1:])
        .transpose(1, 2)
        .reshape(b, cfg.latent_channels, k, *mean.shape[-2:])
    )
    return (mean - sd["shift"]) / sd["scale"]


def reference_decode_features(sd, cfg: VAEConfig, z_norm, num_frames):
    """Original temporal decode of one window: denormalise, decoder, drop 7 padding frames."""
    t, g = cfg.temporal, cfg.temporal.num_groups
    z = z_norm * sd["scale"] + sd["shift"]
    d = "temporal_vae.decoder"
    x = _conv(sd, "temporal_vae.post_quant_conv", z)
    x = _conv(sd, f"{d}.conv1", x)
    for j in range(t.num_res_blocks):
        x = _resblock(sd, f"{d}.res_blocks.{j}", x, g)
    x = _resblock(sd, f"{d}.upsample_block", x.repeat_interleave(2, dim=2), g)
    for i in reversed(range(len(t.channel_multipliers))):
        for j in range(t.num_res_blocks):
            x = _resblock(sd, f"{d}.block_res_blocks.{i}.{j}", x, g)
        if f"{d}.conv_blocks.{i - 1}.conv.weight" in sd and i > 0:
            x = _conv(sd, f"{d}.conv_blocks.{i - 1}", x)
            b, c2, tt, h, w = x.shape
            x = (
                x.view(b, c2 // 2, 2, tt, h, w)
                .permute(0, 1, 3, 2, 4, 5)
                .reshape(b, c2 // 2, 2 * tt, h, w)
            )
    x = _conv(sd, f"{d}.conv_out", F.silu(_gn(sd, f"{d}.norm1", x, g)))
    pad = (8 - num_frames % 8) % 8
    return x[:, :, pad:]


# ---------------------------------------------------------------- tests
def test_every_original_key_maps_and_every_model_key_is_produced():
    cfg = mugv_config()
    with torch.device("meta"):
        model = MUGVAE(cfg)
        original = {k: torch.empty(s) for k, s in original_shapes(cfg).items()}
    converted = convert_original_state_dict(original, cfg, model.state_dict())
    assert set(converted) == set(model.state_dict())
    assert map_original_key("logvar") is None
    assert (
        map_original_key("temporal_vae.decoder.block_res_blocks.0.3.conv3.conv.weight")
        == "temporal_decoder.stages.3.blocks.3.shortcut.conv.weight"
    )
    assert (
        map_original_key("temporal_vae.decoder.conv_blocks.2.conv.bias")
        == "temporal_decoder.stages.0.up.proj.conv.bias"
    )


def test_mapping_refuses_unknown_missing_and_misshaped_keys():
    cfg = tiny_config()
    model = MUGVAE(cfg)
    original = random_original(cfg)
    with pytest.raises(ValueError, match="matches no mapping rule"):
        convert_original_state_dict(
            {**original, "ema.weight": torch.zeros(1)}, cfg, model.state_dict()
        )
    partial = dict(original)
    del partial["temporal_vae.decoder.conv_out.conv.bias"]
    with pytest.raises(ValueError, match="lacks 1 of our keys"):
        convert_original_state_dict(partial, cfg, model.state_dict())
    bad = dict(original)
    bad["temporal_vae.encoder.norm1.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="shape"):
        convert_original_state_dict(bad, cfg, model.state_dict())


def test_imported_model_reproduces_the_original_forward(tmp_path, make_video):
    cfg = tiny_config()
    original = random_original(cfg, seed=1)
    torch.save(original, tmp_path / "vae.pt")
    model = import_original(tmp_path / "vae.pt", cfg).double()
    sd = {k: v.double() for k, v in original.items()}
    video = make_video(t=17, h=32, w=40).double()
    with torch.no_grad():
        z = model.encode(video)
        z_ref = reference_encode(sd, cfg, video)
        torch.testing.assert_close(z, z_ref, rtol=1e-9, atol=1e-9)
        # Decoder: one window of all 3 latents -> 17 frames of trunk features.
        f = model.decode_features(model.denormalize(z), window=3)
        f_ref = reference_decode_features(sd, cfg, z_ref, num_frames=17)
        torch.testing.assert_close(f, f_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(model.latent_std.float(), original["scale"].flatten())
