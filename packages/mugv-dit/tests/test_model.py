"""MUG-DiT forward against an independent float64 reference, and model invariants."""

from __future__ import annotations

import pytest
import torch
from mugv_dit.model import PackedText
from mugv_dit_reference import reference_forward
from mugv_kernels.dit_ops import patchify, unpatchify


def _inputs(cfg, b=2, t=3, h=4, w=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cfg.in_channels, t, h, w, generator=g)
    texts = [torch.randn(5, cfg.text_dim, generator=g), torch.randn(3, cfg.text_dim, generator=g)][
        :b
    ]
    sigma = torch.rand(b, generator=g)
    fps = torch.tensor([24.0, 12.0])[:b]
    noisy = torch.ones(b, t, dtype=torch.bool)
    noisy[0, 0] = False  # sample 0: first frame is a clean condition (i2v)
    return x, sigma, texts, fps, noisy


def test_forward_matches_float64_reference(debug_model, debug_cfg):
    x, sigma, texts, fps, noisy = _inputs(debug_cfg)
    model = debug_model.double()
    out = model(
        x.double(),
        sigma.double(),
        PackedText.from_list([t.double() for t in texts]),
        fps_B=fps.double(),
        noisy_frames_BT=noisy,
    )
    ref = reference_forward(model.state_dict(), debug_cfg, x.double(), sigma, texts, fps, noisy)
    assert out.shape == (2, debug_cfg.out_channels, 3, 4, 6)
    torch.testing.assert_close(out.double(), ref, rtol=1e-9, atol=1e-9)


FRAME_INDEX = torch.tensor([[3, 5, 6, 9, 12], [0, 2, 4, 6, 20]])  # [B, T+2], T=3


def test_frame_index_places_start_and_end_tokens(debug_model, debug_cfg):
    """Unequal text lengths, a clean frame 0 and a non-default [B, T+2] frame index whose
    start/end entries are not the neighbouring frames' times: the float64 reference places the
    start token at (fi[0], row 0, col 0) and the end token at (fi[T+1], row H-1, col W-1)."""
    x, sigma, texts, fps, noisy = _inputs(debug_cfg)
    model = debug_model.double()
    packed = PackedText.from_list([t.double() for t in texts])
    kwargs = dict(fps_B=fps.double(), noisy_frames_BT=noisy)
    out = model(x.double(), sigma.double(), packed, frame_index_BF=FRAME_INDEX, **kwargs)
    ref = reference_forward(
        model.state_dict(), debug_cfg, x.double(), sigma, texts, fps, noisy, FRAME_INDEX
    )
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    # the start/end entries matter: moving only them changes every token's prediction
    moved = FRAME_INDEX.clone()
    moved[:, 0] += 1
    moved[:, -1] -= 1
    out_moved = model(x.double(), sigma.double(), packed, frame_index_BF=moved, **kwargs)
    assert (out_moved - out).abs().amax() > 1e-6


def test_default_frame_index_is_arange_t_plus_2(debug_model, debug_cfg):
    x, sigma, texts, fps, noisy = _inputs(debug_cfg)
    packed = PackedText.from_list(texts)
    out = debug_model(x, sigma, packed, fps_B=fps, noisy_frames_BT=noisy)
    explicit = torch.arange(5)[None].expand(2, 5)
    same = debug_model(x, sigma, packed, fps_B=fps, noisy_frames_BT=noisy, frame_index_BF=explicit)
    torch.testing.assert_close(out, same, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"T'\+2"):
        debug_model(
            x, sigma, packed, fps_B=fps, noisy_frames_BT=noisy, frame_index_BF=torch.zeros(2, 3)
        )


def test_float32_relative_error_vs_float64(debug_model, debug_cfg):
    """The float32 model against the float64 reference: ~1e-6 relative (as the release,
    which computes RoPE, RMSNorm and the timestep embedding in float32)."""
    x, sigma, texts, fps, noisy = _inputs(debug_cfg)
    out = debug_model(
        x,
        sigma,
        PackedText.from_list(texts),
        fps_B=fps,
        noisy_frames_BT=noisy,
        frame_index_BF=FRAME_INDEX,
    )
    ref = reference_forward(
        debug_model.state_dict(), debug_cfg, x.double(), sigma, texts, fps, noisy, FRAME_INDEX
    )
    rel = ((out.double() - ref).norm() / ref.norm()).item()
    assert rel < 5e-6, rel


def test_float32_close_to_float64(debug_model, debug_cfg):
    x, sigma, texts, fps, noisy = _inputs(debug_cfg)
    out32 = debug_model(x, sigma, PackedText.from_list(texts), fps_B=fps, noisy_frames_BT=noisy)
    ref = reference_forward(
        debug_model.state_dict(), debug_cfg, x.double(), sigma, texts, fps, noisy
    )
    torch.testing.assert_close(out32.double(), ref, rtol=1e-4, atol=1e-4)


def test_packed_text_is_per_sample(debug_model, debug_cfg):
    """Sample 0's output must not depend on sample 1's text (no leakage through packing)."""
    x, sigma, texts, fps, noisy = _inputs(debug_cfg)
    out_a = debug_model(x, sigma, PackedText.from_list(texts), fps_B=fps, noisy_frames_BT=noisy)
    texts_b = [texts[0], torch.randn(7, debug_cfg.text_dim)]
    out_b = debug_model(x, sigma, PackedText.from_list(texts_b), fps_B=fps, noisy_frames_BT=noisy)
    torch.testing.assert_close(out_a[0], out_b[0])
    assert not torch.allclose(out_a[1], out_b[1])


def test_caption_dropout_uses_null_caption(debug_model, debug_cfg):
    x, sigma, texts, fps, noisy = _inputs(debug_cfg)
    drop = torch.tensor([True, False])
    out = debug_model(
        x, sigma, PackedText.from_list(texts), fps_B=fps, noisy_frames_BT=noisy, drop_caption_B=drop
    )
    null = debug_model.y_embedder.null_caption.detach()
    ref = debug_model(
        x, sigma, PackedText.from_list([null, texts[1]]), fps_B=fps, noisy_frames_BT=noisy
    )
    torch.testing.assert_close(out, ref)
    plain = debug_model(x, sigma, PackedText.from_list(texts), fps_B=fps, noisy_frames_BT=noisy)
    assert not torch.allclose(out[0], plain[0])
    torch.testing.assert_close(out[1], plain[1])


def test_clean_frames_take_t0_modulation(debug_model, debug_cfg):
    """With every frame clean, sigma no longer matters."""
    x, sigma, texts, fps, _ = _inputs(debug_cfg)
    clean = torch.zeros(2, 3, dtype=torch.bool)
    a = debug_model(x, sigma, PackedText.from_list(texts), fps_B=fps, noisy_frames_BT=clean)
    b = debug_model(x, 1 - sigma, PackedText.from_list(texts), fps_B=fps, noisy_frames_BT=clean)
    torch.testing.assert_close(a, b)
    noisy = torch.ones(2, 3, dtype=torch.bool)
    c = debug_model(x, sigma, PackedText.from_list(texts), fps_B=fps, noisy_frames_BT=noisy)
    assert not torch.allclose(a, c)


def test_patchify_roundtrip():
    x = torch.randn(2, 5, 4, 6, 8)
    tokens = patchify(x, (1, 2, 2))
    assert tokens.shape == (2, 4 * 3 * 4, 20)
    # unpatchify expects (pt, ph, pw, C) order per token: permute channel-major patches
    tok = tokens.reshape(2, 48, 5, 1, 2, 2).permute(0, 1, 3, 4, 5, 2).reshape(2, 48, 20)
    torch.testing.assert_close(unpatchify(tok, (4, 3, 4), (1, 2, 2), 5), x)


def test_bad_grid_names_shape(debug_model, debug_cfg):
    x, sigma, texts, fps, _ = _inputs(debug_cfg, h=5)
    with pytest.raises(ValueError, match=r"\(T,H,W\)=\(3,5,6\)"):
        debug_model(x, sigma, PackedText.from_list(texts), fps_B=fps)


def test_recompute_gives_identical_gradients(megatron_single, debug_cfg):
    from mugv_dit import build_model
    from mugv_dit.config import RuntimeConfig

    x, sigma, texts, fps, noisy = _inputs(debug_cfg)
    grads = []
    for mode in ("none", "selective", "full"):
        cfg = debug_cfg
        torch.manual_seed(0)
        model = build_model(cfg, runtime=RuntimeConfig(recompute=mode)).train()
        out = model(x, sigma, PackedText.from_list(texts), fps_B=fps, noisy_frames_BT=noisy)
        out.pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    for other in grads[1:]:
        assert other.keys() == grads[0].keys() and len(grads[0]) > 30
        for name, g in grads[0].items():
            torch.testing.assert_close(other[name], g, rtol=1e-5, atol=1e-7)


def test_fused_ops_switch_matches_torch_path(megatron_single, debug_cfg):
    """runtime.fused_ops routes through mugv_kernels (its reference path on CPU): same
    outputs."""
    from mugv_dit import build_model
    from mugv_dit.config import RuntimeConfig

    x, sigma, texts, fps, noisy = _inputs(debug_cfg)
    outs = []
    for fused in (False, True):
        cfg = debug_cfg
        torch.manual_seed(0)
        model = build_model(cfg, runtime=RuntimeConfig(fused_ops=fused)).double()
        outs.append(
            model(
                x.double(),
                sigma.double(),
                PackedText.from_list([t.double() for t in texts]),
                fps_B=fps.double(),
                noisy_frames_BT=noisy,
            )
        )
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-10, atol=1e-10)


def test_fused_ln_linear_switch_matches_unfused_path(megatron_single, debug_cfg, monkeypatch):
    """runtime.fused_ln_linear=on hands qkv and fc1 their un-normalised input plus the
    modulation (mugv_kernels.ln_linear's reference path on CPU): same outputs and gradients
    (with selective recompute: the MLP's checkpoint takes the deferred input too); "auto" is
    the unfused path exactly off CUDA."""
    import mugv_kernels.ln_linear as ln_linear
    from mugv_dit import build_model
    from mugv_dit.config import RuntimeConfig

    calls = []
    real = ln_linear.modulated_ln_linear
    monkeypatch.setattr(
        ln_linear, "modulated_ln_linear", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    x, sigma, texts, fps, noisy = _inputs(debug_cfg)
    outs, grads = [], []
    for fused_ln, method in (("off", "fused"), ("auto", "fused"), ("on", "fused"),
                             ("on", "recompute")):  # fmt: skip
        torch.manual_seed(0)
        runtime = RuntimeConfig(fused_ops=True, fused_ln_linear=fused_ln, recompute="selective",
                                ln_linear_method=method)  # fmt: skip
        model = build_model(debug_cfg, runtime=runtime).double().train()
        out = model(
            x.double(),
            sigma.double(),
            PackedText.from_list([t.double() for t in texts]),
            fps_B=fps.double(),
            noisy_frames_BT=noisy,
        )
        out.pow(2).mean().backward()
        outs.append(out.detach())
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
        if fused_ln != "on":  # "auto" is "off" off CUDA
            assert not calls
    # qkv and fc1 of every block (fc1 twice: recomputed in backward), for both methods
    assert len(calls) == 2 * 3 * debug_cfg.num_layers
    assert torch.equal(outs[1], outs[0])
    for i in (2, 3):
        torch.testing.assert_close(outs[i], outs[0], rtol=1e-10, atol=1e-10)
        assert grads[i].keys() == grads[0].keys() and any("qkv" in n for n in grads[0])
        for name, g in grads[0].items():
            torch.testing.assert_close(grads[i][name], g, rtol=1e-9, atol=1e-12, msg=name)


def test_parallel_context_must_match_the_transformer_config(megatron_single, debug_cfg):
    from mugv_dit.model import MUGDiT, megatron_config

    with pytest.raises(ValueError, match=r"\(TP, PP, CP\)=\(1, 1, 1\) but .* \(1, 2, 1\)"):
        MUGDiT(debug_cfg, megatron_config(debug_cfg, pipeline_parallel=2))


def test_token_layout_pads_then_cuts_cp_then_sp_shards():
    from mugv_dit.model.parallel_context import ParallelContext, TokenLayout

    ctx = ParallelContext(tp_rank=1, tp_size=2, cp_rank=1, cp_size=2)
    layout = TokenLayout.of(11, ctx, sequence_parallel=True)
    assert (layout.n_padded, layout.lo, layout.hi) == (12, 6, 12)
    x_BN1 = torch.arange(1.0, 12.0)[None, :, None]
    assert layout.cp_shard(x_BN1).flatten().tolist() == [7, 8, 9, 10, 11, 0]
    assert layout.sp_shard(layout.cp_shard(x_BN1)).flatten().tolist() == [10, 11, 0]
    plain = TokenLayout.of(11, ParallelContext.single(), sequence_parallel=False)
    assert plain.n_padded == 11 and torch.equal(plain.cp_shard(x_BN1), x_BN1)


def test_rope_angles_place_start_end_and_video_tokens_as_the_release():
    """Closed form: part j of each third rotates by pos * theta^(-6j/Dh); the start token sits
    at (row 0, col 0, time fi[0]), video token (t, h, w) at (h, w, fi[1+t]), the end token at
    (H-1, W-1, fi[T+1])."""
    from mugv_kernels.rope import dit_token_positions, rope3d_angles

    t, h, w, dh, theta = 2, 3, 4, 12, 50.0
    fi = torch.tensor([5, 1, 7, 9])
    ang = rope3d_angles(dit_token_positions((t, h, w), fi), dh, theta=theta)
    inv = theta ** (-6.0 * torch.arange(dh // 6, dtype=torch.float64) / dh)

    def expect(row, col, time):
        return torch.cat((row * inv, col * inv, time * inv))

    assert ang.shape == (t * h * w + 2, dh // 2) and ang.dtype == torch.float64
    torch.testing.assert_close(ang[0], expect(0, 0, 5), rtol=1e-15, atol=0)
    torch.testing.assert_close(ang[-1], expect(h - 1, w - 1, 9), rtol=1e-15, atol=0)
    token = 1 + (1 * h + 2) * w + 3  # video token (t=1, h=2, w=3)
    torch.testing.assert_close(ang[token], expect(2, 3, 7), rtol=1e-15, atol=0)
