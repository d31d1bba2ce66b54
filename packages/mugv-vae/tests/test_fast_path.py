"""The inference fast path: functional trunk blocks, channels-last layouts, memory budget."""

from __future__ import annotations

import json

import pytest
import torch
from mugv_vae.config import VAERuntime, tiny_config
from mugv_vae.model import MUGVAE
from mugv_vae.model.streaming import plan, temporal_bytes_per_chunk, trunk_bytes_per_frame
from mugv_vae.model.trunk import block_forward


def _trunk_blocks(model: MUGVAE):
    enc, dec = model.trunk.encoder, model.trunk.decoder
    return [*enc.down_blocks, enc.mid_block, dec.mid_block, *dec.up_blocks]


def test_functional_trunk_blocks_match_the_diffusers_modules():
    # Independent reference: diffusers' own module forwards, float64 (the up-sampler's
    # interpolation, the attention processor and the res-blocks are theirs).
    torch.manual_seed(0)
    model = MUGVAE(tiny_config()).double().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for block in _trunk_blocks(model):
            c = block.resnets[0].in_channels
            x = torch.randn(2, c, 16, 24, generator=g, dtype=torch.float64)
            torch.testing.assert_close(block_forward(block, x, False), block(x), rtol=0, atol=1e-12)


def test_channels_last_model_matches_the_default_layout(make_video):
    torch.manual_seed(0)
    plain = MUGVAE(tiny_config()).eval()
    cl = MUGVAE(tiny_config(), VAERuntime(channels_last=True)).eval()
    cl.load_state_dict(plain.state_dict())
    conv = cl.trunk.decoder.up_blocks[-1].resnets[0].conv1
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    conv3d = cl.temporal_encoder.conv_in.conv
    assert conv3d.weight.is_contiguous(memory_format=torch.channels_last_3d)
    video = make_video(t=17, h=32, w=48)
    with torch.no_grad():
        z = plain.encode(video)
        torch.testing.assert_close(cl.encode(video), z, rtol=1e-4, atol=1e-5)
        for window in (1, 2):
            x = plain.decode(z, window=window)
            y = cl.decode(z, window=window)
            assert y.is_contiguous()  # the output video is written into a plain buffer
            torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5)


def test_memory_budget_picks_micro_batches_and_keeps_results(make_video):
    cfg, rt = tiny_config(), VAERuntime()
    per_frame = trunk_bytes_per_frame(cfg, rt, 64, 64, 4)
    per_chunk = temporal_bytes_per_chunk(cfg, 64, 64, 4)
    # c0=8, c1=8: max(4*8, 3*8) = 32 channels of fp32 per pixel.
    assert per_frame == 32 * 64 * 64 * 4
    assert per_chunk == 2 * 8 * 16 * 8 * 8 * 4
    assert plan(cfg, rt, 64, 64, 4, None, None).frame_batch is None  # no budget: no limit
    budgeted = VAERuntime(max_activation_bytes=10 * per_frame)
    p = plan(cfg, budgeted, 64, 64, 4, None, None)
    # Half the budget for the temporal pass: 10 * 524288 / (2 * 65536) = 40 chunks; their
    # features (40 * 65536 / 2 bytes) stay alive beside the trunk: 7 frames fit the rest.
    assert (p.chunk_batch, p.frame_batch) == (40, 7)
    assert plan(cfg, budgeted, 64, 64, 4, 5, None).frame_batch == 5  # explicit sizes win
    folded = VAERuntime(fold_upsample_conv=True)
    assert trunk_bytes_per_frame(cfg, folded, 64, 64, 4) == per_frame  # 4*c0 = 4*c1 here
    big = cfg.model_copy(
        update={"trunk": cfg.trunk.model_copy(update={"block_out_channels": (8, 16, 16, 16)})}
    )
    assert trunk_bytes_per_frame(big, folded, 64, 64, 4) == 4 * 16 * 64 * 64 * 4
    assert trunk_bytes_per_frame(big, rt, 64, 64, 4) == 3 * 16 * 64 * 64 * 4
    tiny_budget = VAERuntime(max_activation_bytes=1)
    assert plan(cfg, tiny_budget, 64, 64, 4, None, None) == plan(cfg, rt, 64, 64, 4, 1, 1)

    torch.manual_seed(0)
    free = MUGVAE(cfg).eval()
    tight = MUGVAE(cfg, tiny_budget).eval()
    tight.load_state_dict(free.state_dict())
    video = make_video(t=25)
    with torch.no_grad():
        z = free.encode(video)
        torch.testing.assert_close(tight.encode(video), z, rtol=1e-4, atol=1e-5)
        for window in (1, 2, 8):
            torch.testing.assert_close(
                tight.decode(z, window=window), free.decode(z, window=window), rtol=1e-4, atol=5e-5
            )


def test_runtime_is_chosen_when_loading_and_not_stored(tmp_path):
    torch.manual_seed(0)
    MUGVAE(tiny_config(), VAERuntime(channels_last=True)).save_pretrained(tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert meta["version"] == "1.1"
    assert set(meta["config"]) == {
        "trunk", "temporal", "latent_channels", "in_channels", "variant", "unified"
    }  # fmt: skip
    plain = MUGVAE.from_pretrained(tmp_path / "ckpt")
    assert plain.runtime == VAERuntime() and not plain.trunk.channels_last
    rt = VAERuntime(channels_last=True, max_activation_bytes=2**20)
    model = MUGVAE.from_pretrained(tmp_path / "ckpt", runtime=rt)
    assert model.runtime == rt and model.trunk.channels_last
    assert model.config == plain.config == tiny_config()
    with pytest.raises(TypeError):
        MUGVAE.from_pretrained(tmp_path / "ckpt", latent_channels=8)


def test_apply_runtime_switches_a_built_model(make_video):
    torch.manual_seed(0)
    model = MUGVAE(tiny_config()).eval()
    video = make_video(t=9)
    with torch.no_grad():
        z = model.encode(video)
        model.apply_runtime(VAERuntime(channels_last=True, max_activation_bytes=1))
        conv = model.trunk.decoder.up_blocks[-1].resnets[0].conv1
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(model.encode(video), z, rtol=1e-4, atol=1e-5)
        model.apply_runtime(VAERuntime())
        assert conv.weight.is_contiguous() and not model.trunk.channels_last


@pytest.mark.parametrize("channels_last", [False, True])
def test_folded_upsample_conv_is_the_same_function(channels_last):
    # float64: the 2x2 phase convs equal nearest-2x + 3x3 conv up to rounding.
    from mugv_vae.model.trunk import folded_upsample_forward, upsample_forward

    torch.manual_seed(0)
    model = MUGVAE(tiny_config()).double().eval()
    up = model.trunk.decoder.up_blocks[0].upsamplers[0]
    x = torch.randn(2, up.channels, 5, 7, dtype=torch.float64)
    if channels_last:
        up.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = folded_upsample_forward(up, x, {})
        ref = upsample_forward(up, x)
    assert out.shape == (2, up.conv.out_channels, 10, 14)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_fold_upsample_switch_in_the_model(make_video):
    torch.manual_seed(0)
    plain = MUGVAE(tiny_config()).double().eval()
    folded = MUGVAE(tiny_config(), VAERuntime(fold_upsample_conv=True))
    folded = folded.double().eval()
    folded.load_state_dict(plain.state_dict())
    z = torch.randn(1, 24, 2, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(folded.decode(z), plain.decode(z), rtol=0, atol=1e-10)
        assert len(folded.trunk._fold_cache) == 3  # one entry per up-sampler
