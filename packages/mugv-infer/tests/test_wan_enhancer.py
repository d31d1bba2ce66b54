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


# ---------------------------------------------------------------- the LoRA through peft
def _lora_dit(fuse=False, lora=None, **kw):
    from mugv_infer.wan_enhancer.convert import load_release_enhancer_dit
    from wan_release_fixtures import release_lora_state

    lora = release_lora_state(dtype=torch.float64) if lora is None else lora
    return load_release_enhancer_dit(
        release_dit_state(), lora, fuse_lora=fuse, attention_head_dim=HEAD_DIM, **kw
    )


def test_release_lora_every_key_placed_and_the_update_is_alpha_over_r_BA():
    from peft.tuners.lora import LoraLayer
    from wan_release_fixtures import LORA_RANK, LORA_TARGETS, release_lora_state

    lora = release_lora_state(dtype=torch.float64)
    model = _lora_dit(lora=lora)
    adapted = {n for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    assert len(adapted) == LAYERS * len(LORA_TARGETS)
    assert "blocks.1.attn2.to_out.0" in adapted and "blocks.0.ffn.net.0.proj" in adapted
    n_lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert n_lora == sum(v.numel() for k, v in lora.items() if "lora_" in k)  # none left
    # the release's cross-attention output projection of block 1, float64 from the files
    state = release_dit_state()
    w, b = state["blocks.1.cross_attn.o.weight"], state["blocks.1.cross_attn.o.bias"]
    a = lora["pipe.dit.blocks.1.cross_attn.o.lora_A.default.weight"]
    bb = lora["pipe.dit.blocks.1.cross_attn.o.lora_B.default.weight"]
    x = torch.randn(3, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    ref = x @ w.T + b + (4.0 / LORA_RANK) * (x @ a.T @ bb.T)  # release alpha 4
    with torch.no_grad():
        torch.testing.assert_close(model.blocks[1].attn2.to_out[0](x), ref, rtol=0, atol=1e-12)
    # the retrained patch embeddings of the LoRA file replace the DiT file's, then fold
    pe = model.patch_embedding
    torch.testing.assert_close(pe.weight[:, :LATENT], lora["pipe.dit.patch_embedding.weight"])
    torch.testing.assert_close(
        pe.bias, lora["pipe.dit.patch_embedding.bias"] + lora["pipe.dit.patch_embedding2.bias"]
    )


def test_release_lora_fused_equals_unfused():
    from mugv_infer.wan_enhancer.transformer import frame_timesteps, framewise_forward

    x, y, text = _inputs()
    hidden, t_BT = torch.cat([x, y], 1), frame_timesteps(300.0, 2, 3)
    with torch.no_grad():
        plain = framewise_forward(_dit(), hidden, t_BT, text)
        unfused = framewise_forward(_lora_dit(), hidden, t_BT, text)
        fused = framewise_forward(_lora_dit(fuse=True), hidden, t_BT, text)
    torch.testing.assert_close(fused, unfused, rtol=1e-9, atol=1e-9)
    assert (unfused - plain).abs().amax() > 1e-4


def test_release_lora_bad_keys_refused():
    from wan_release_fixtures import release_lora_state

    lora = release_lora_state(dtype=torch.float64, with_base=False)
    with pytest.raises(ValueError, match="not the DiT's"):
        _lora_dit(lora={**lora, "pipe.vae.conv1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"fit no DiT tensor.*blocks\.0\.nothing"):
        _lora_dit(lora={**lora, "pipe.dit.blocks.0.nothing.weight": torch.zeros(1)})
    odd = {k: v for k, v in lora.items() if k != "pipe.dit.blocks.0.ffn.2.lora_B.default.weight"}
    with pytest.raises(ValueError, match=r"without their pair.*blocks\.0\.ffn\.2"):
        _lora_dit(lora=odd)
    bad = {**lora, "pipe.dit.blocks.0.norm3.lora_A.default.weight": torch.zeros(8, DIM)}
    bad["pipe.dit.blocks.0.norm3.lora_B.default.weight"] = torch.zeros(DIM, 8)
    with pytest.raises(ValueError, match=r"fit no linear layer.*blocks\.0\.norm3"):
        _lora_dit(lora=bad)


# ---------------------------------------------------------------- the release's forward, float64
def _release_forward(s, x, y, t, text, head_dim):
    """The release's enhancer DiT written from its definition, float64, on its own key names:
    two patch embeddings summed; time MLP on the float64 sinusoid, its 6-way projection; the
    first latent frame modulated at t = 0 (the others at t); blocks of modulated LN ->
    self-attention (RMS-normed q/k over the width, 3D RoPE on interleaved pairs, head width
    split t / h / w as d - 4 (d // 6), 2 (d // 6), 2 (d // 6)) -> gated residual;
    affine LN (``norm3``) -> cross-attention to the embedded text; modulated LN -> GELU-tanh
    FFN -> gated residual; modulated LN head; unpatchify (1, 2, 2)."""

    def lin(name, v):
        return v @ s[f"{name}.weight"].T + s[f"{name}.bias"]

    def ln(v, w=None, b=None):
        v = (v - v.mean(-1, keepdim=True)) / torch.sqrt(
            v.var(-1, unbiased=False, keepdim=True) + 1e-6
        )
        return v if w is None else v * w + b

    def rms(v, w):
        return v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6) * w

    def gelu_tanh(v):
        return 0.5 * v * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (v + 0.044715 * v**3)))

    def sinus(tt, dim=16):
        f = 10000.0 ** (-torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
        a = tt.double()[:, None] * f
        return torch.cat([torch.cos(a), torch.sin(a)], 1)

    b, _, nt, hh, ww = x.shape
    h2, w2 = hh // 2, ww // 2
    conv = F.conv3d(x, s["patch_embedding.weight"], s["patch_embedding.bias"], stride=(1, 2, 2))
    conv = conv + F.conv3d(
        y, s["patch_embedding2.weight"], s["patch_embedding2.bias"], stride=(1, 2, 2)
    )
    v = conv.flatten(2).transpose(1, 2)  # B N D, tokens in (t, h, w) order
    n, d = v.shape[1:]
    first = (torch.arange(n) < h2 * w2)[None, :, None]

    def temb(tt):
        e = lin("time_embedding.2", F.silu(lin("time_embedding.0", sinus(tt))))
        return e, lin("time_projection.1", F.silu(e)).view(b, 6, d)

    (e, e6), (e_0, e6_0) = temb(t), temb(torch.zeros_like(t))
    ctx = lin("text_embedding.2", gelu_tanh(lin("text_embedding.0", text)))
    # RoPE angles per token and pair
    heads, pairs = d // head_dim, head_dim // 2
    sizes = [head_dim - 4 * (head_dim // 6), 2 * (head_dim // 6), 2 * (head_dim // 6)]
    pos = torch.stack(
        torch.meshgrid(torch.arange(nt), torch.arange(h2), torch.arange(w2), indexing="ij"), -1
    )
    pos = pos.reshape(n, 3).double()
    ang = torch.cat(
        [
            pos[:, i : i + 1] * 10000.0 ** (-torch.arange(0, sz, 2, dtype=torch.float64) / sz)
            for i, sz in enumerate(sizes)
        ],
        dim=1,
    )  # N, pairs
    assert ang.shape == (n, pairs)

    def rope(q):  # B N H hd, interleaved pairs (a, b) -> (a cos - b sin, a sin + b cos)
        q = q.view(b, n, heads, pairs, 2)
        c, si = torch.cos(ang)[None, :, None], torch.sin(ang)[None, :, None]
        return torch.stack(
            [q[..., 0] * c - q[..., 1] * si, q[..., 0] * si + q[..., 1] * c], -1
        ).view(b, n, heads, head_dim)

    def attend(q, k, val):  # B Lq H hd, B Lk H hd
        w_ = torch.einsum("bqhc,bkhc->bhqk", q, k) / head_dim**0.5
        return torch.einsum("bhqk,bkhc->bqhc", w_.softmax(-1), val).reshape(
            q.shape[0], q.shape[1], -1
        )

    def per_token(table, e_, e_0):  # the t = 0 modulation on the first frame's tokens
        return [
            torch.where(first, a[:, None], c[:, None])
            for a, c in zip((table + e_0).unbind(1), (table + e_).unbind(1))
        ]

    for i in range(sum(1 for k in s if k.endswith(".modulation") and k.startswith("blocks."))):
        p = f"blocks.{i}."
        mm = per_token(s[f"{p}modulation"], e6, e6_0)
        xt = ln(v) * (1 + mm[1]) + mm[0]
        q = rms(lin(f"{p}self_attn.q", xt), s[f"{p}self_attn.norm_q.weight"]).view(
            b, n, heads, head_dim
        )
        k = rms(lin(f"{p}self_attn.k", xt), s[f"{p}self_attn.norm_k.weight"]).view(
            b, n, heads, head_dim
        )
        val = lin(f"{p}self_attn.v", xt).view(b, n, heads, head_dim)
        yy = lin(f"{p}self_attn.o", attend(rope(q), rope(k), val))
        v = v + yy * mm[2]
        xc = ln(v, s[f"{p}norm3.weight"], s[f"{p}norm3.bias"])
        lq = ctx.shape[1]
        q = rms(lin(f"{p}cross_attn.q", xc), s[f"{p}cross_attn.norm_q.weight"]).view(
            b, n, heads, head_dim
        )
        k = rms(lin(f"{p}cross_attn.k", ctx), s[f"{p}cross_attn.norm_k.weight"]).view(
            b, lq, heads, head_dim
        )
        val = lin(f"{p}cross_attn.v", ctx).view(b, lq, heads, head_dim)
        v = v + lin(f"{p}cross_attn.o", attend(q, k, val))
        xt = ln(v) * (1 + mm[4]) + mm[3]
        yy = lin(f"{p}ffn.2", gelu_tanh(lin(f"{p}ffn.0", xt)))
        v = v + yy * mm[5]
    hm, hm0 = (
        (s["head.modulation"] + e[:, None]).unbind(1),
        (s["head.modulation"] + e_0[:, None]).unbind(1),
    )
    v = torch.where(
        first,
        ln(v) * (1 + hm0[1][:, None]) + hm0[0][:, None],
        ln(v) * (1 + hm[1][:, None]) + hm[0][:, None],
    )
    out = lin("head.head", v)  # B N (1*2*2*C)
    c = out.shape[-1] // 4
    out = out.view(b, nt, h2, w2, 1, 2, 2, c)
    return torch.einsum("bfhwpqrc->bcfphqwr", out).reshape(b, c, nt, hh, ww)


def test_converted_dit_matches_the_release_forward_float64():
    """Every renamed tensor does the release's job (the norm2/norm3 swap, q/k norms, head
    modulation, RoPE split): the converted model's frame-wise forward equals the release's
    forward written from its definition on the release's own key names."""
    from mugv_infer.wan_enhancer.transformer import frame_timesteps, framewise_forward

    state = release_dit_state()
    x, y, text = _inputs()
    t = torch.tensor([300.0, 850.0], dtype=torch.float64)
    ref = _release_forward(state, x, y, t, text, HEAD_DIM)
    model = _dit(state)
    with torch.no_grad():
        ours = framewise_forward(
            model, torch.cat([x, y], 1), frame_timesteps(t, 2, x.shape[2]), text
        )
    # diffusers' FP32LayerNorm computes in float32 even for float64 inputs
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert ref.abs().amax() > 0.1
