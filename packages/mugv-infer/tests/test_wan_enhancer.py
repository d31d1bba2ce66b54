"""The release's Wan-based enhancer from diffusers parts (mugv_infer.wan_enhancer): the folded
patch embedding against the two-embedding sum (float64), the frame-wise timestep forward
against diffusers' own per-token forward, and the key converters on tiny random files laid
out like the release (every key placed, none left)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from wan_release_fixtures import DIM, FFN, HEADS, LATENT, LAYERS, TEXT_DIM, release_dit_state

HEAD_DIM = DIM // HEADS


def _dit(state=None, dtype=None):
    from mugv_infer.wan_enhancer.convert import load_release_dit

    return load_release_dit(
        release_dit_state() if state is None else state, attention_head_dim=HEAD_DIM, dtype=dtype
    )


def _inputs(seed=0, b=2, t=3, h=4, w=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, LATENT, t, h, w, generator=g).to(dtype)
    y = torch.randn(b, LATENT, t, h, w, generator=g).to(dtype)
    text = torch.randn(b, 5, TEXT_DIM, generator=g).to(dtype)
    return x, y, text


# ---------------------------------------------------------------- the folded patch embedding
def test_folded_patch_embedding_equals_the_two_embedding_sum_float64():
    state = release_dit_state()
    model = _dit(state)
    x, y, _ = _inputs()
    two = F.conv3d(
        x, state["patch_embedding.weight"], state["patch_embedding.bias"], stride=(1, 2, 2)
    )
    two = two + F.conv3d(
        y, state["patch_embedding2.weight"], state["patch_embedding2.bias"], stride=(1, 2, 2)
    )
    with torch.no_grad():
        one = model.patch_embedding(torch.cat([x, y], dim=1))
    assert model.patch_embedding.weight.dtype == torch.float64
    assert model.config.in_channels == 2 * LATENT and model.config.out_channels == LATENT
    torch.testing.assert_close(one, two, rtol=0, atol=1e-12)


def test_fold_refuses_unequal_embeddings():
    from mugv_infer.wan_enhancer.transformer import fold_patch_embeddings

    with pytest.raises(ValueError, match="differ in shape"):
        fold_patch_embeddings(
            torch.zeros(4, 2, 1, 2, 2), torch.zeros(4), torch.zeros(4, 3, 1, 2, 2), torch.zeros(4)
        )


# ---------------------------------------------------------------- every release key placed
def test_release_dit_config_from_shapes():
    model = _dit()
    cfg = model.config
    assert (cfg.num_layers, cfg.ffn_dim, cfg.text_dim, cfg.num_attention_heads) == (
        LAYERS,
        FFN,
        TEXT_DIM,
        HEADS,
    )
    assert cfg.cross_attn_norm and cfg.qk_norm == "rms_norm_across_heads"
    # every release tensor landed somewhere: parameter count = release count - one patch embedding
    state = release_dit_state()
    n_release = sum(v.numel() for v in state.values())
    n_second = state["patch_embedding2.bias"].numel()  # the folded bias is one sum
    assert sum(p.numel() for p in model.parameters()) == n_release - n_second


def test_release_dit_unknown_or_missing_keys_refused():
    state = release_dit_state()
    with pytest.raises(ValueError, match=r"fit no WanTransformer3DModel tensor.*blocks\.0\.extra"):
        _dit({**state, "blocks.0.extra.weight": torch.zeros(3)})
    del state["blocks.1.cross_attn.norm_k.weight"]
    with pytest.raises(ValueError, match=r"missing.*blocks\.1\.attn2\.norm_k"):
        _dit(state)
    with pytest.raises(ValueError, match="not a Wan DiT"):
        _dit({"x": torch.zeros(1)})


# ---------------------------------------------------------------- frame-wise timesteps
def test_framewise_forward_equals_diffusers_per_token_forward():
    """diffusers' per-token timestep path (Wan 2.2 TI2V) with frame 0 at t = 0 and the other
    frames at t gives the same velocity as one modulation per frame."""
    from mugv_infer.wan_enhancer.transformer import frame_timesteps, framewise_forward

    model = _dit(dtype=torch.float32)
    x, y, text = _inputs(dtype=torch.float32)
    b, _, t, h, w = x.shape
    hidden = torch.cat([x, y], dim=1)
    t_BT = frame_timesteps(torch.tensor([300.0, 700.0]), b, t)
    assert t_BT.tolist() == [[0.0, 300.0, 300.0], [0.0, 700.0, 700.0]]
    per_token = t_BT.repeat_interleave((h // 2) * (w // 2), dim=1)  # [B, N]
    with torch.no_grad():
        ref = model(hidden, per_token, text, return_dict=False)[0]
        ours = framewise_forward(model, hidden, t_BT, text, sinusoid_dtype=torch.float32)
        # one timestep for every frame: diffusers' ordinary [B] path
        same = framewise_forward(
            model, hidden, torch.full((b, t), 500.0), text, sinusoid_dtype=torch.float32
        )
        plain = model(hidden, torch.full((b,), 500.0), text, return_dict=False)[0]
    assert ours.shape == (b, LATENT, t, h, w)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(same, plain, rtol=1e-5, atol=1e-5)
    assert (ours - plain).abs().amax() > 1e-3  # the timesteps matter


def test_release_sinusoid_is_float64():
    """The release's timestep features are computed in float64: at t = 999 float32 differs."""
    from mugv_infer.wan_enhancer.transformer import sinusoid

    t = torch.tensor([999.0, 300.0])
    half = 8
    f = 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)
    ref = torch.cat([torch.cos(t.double()[:, None] * f), torch.sin(t.double()[:, None] * f)], 1)
    torch.testing.assert_close(sinusoid(t, 16), ref.float(), rtol=0, atol=0)
    assert (sinusoid(t, 16, torch.float32) - ref.float()).abs().amax() > 0
