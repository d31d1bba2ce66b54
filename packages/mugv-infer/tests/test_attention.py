"""The transformer through the attention dispatch (mugv_kernels.attention, whose own tests
cover the packed text, the masked cross-attention and the auto policy) on CPU: the FA4
packed-text cross-attention path with FA4 replaced by a per-segment PyTorch stand-in (the
real kernel is compared on a GPU in test_gpu.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F


def _model():
    """Two layers, two heads of 24 (FA4 takes head dims that are multiples of 8)."""
    from mugv_infer.models import MUGDiTTransformer3DModel

    model = MUGDiTTransformer3DModel(
        hidden_size=48, num_layers=2, num_heads=2, in_channels=24, text_dim=32
    )
    return model.initialize_weights(0).eval().to(torch.bfloat16)


def _varlen_stand_in(calls: list):
    """FA4's ``flash_attn_varlen_func`` contract in PyTorch: segment i of the packed queries
    attends to segment i of the packed keys; returns ``(out, lse)`` as FA4 does."""

    def varlen(q, k, v, *, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale):
        calls.append((cu_seqlens_q.tolist(), cu_seqlens_k.tolist(), max_seqlen_q, max_seqlen_k))
        assert cu_seqlens_q.dtype == cu_seqlens_k.dtype == torch.int32
        out = torch.empty_like(q)
        for i in range(len(cu_seqlens_q) - 1):
            qs = slice(int(cu_seqlens_q[i]), int(cu_seqlens_q[i + 1]))
            ks = slice(int(cu_seqlens_k[i]), int(cu_seqlens_k[i + 1]))
            assert qs.stop - qs.start <= max_seqlen_q and ks.stop - ks.start <= max_seqlen_k
            o = F.scaled_dot_product_attention(
                *(t[s].float().transpose(0, 1) for t, s in ((q, qs), (k, ks), (v, ks))),
                scale=softmax_scale,
            )
            out[qs] = o.transpose(0, 1).to(q.dtype)
        return out, None

    return varlen


def _dense_stand_in(q, k, v, softmax_scale):
    out = F.scaled_dot_product_attention(
        *(t.float().transpose(1, 2) for t in (q, k, v)), scale=softmax_scale
    )
    return out.transpose(1, 2).to(q.dtype), None


@pytest.fixture
def fake_fa4(monkeypatch):
    """Make this CPU look like a Hopper GPU with FA4 installed (the stand-ins above) whose
    self-check passed, for ``auto``; returns the varlen calls."""
    from mugv_kernels import attention

    calls: list = []
    monkeypatch.setattr(
        attention, "fa4_functions", lambda: (_dense_stand_in, _varlen_stand_in(calls))
    )
    monkeypatch.setattr(attention, "flash_attn2_functions", lambda: None)
    monkeypatch.setattr(attention, "_cuda_index", lambda x: 0)
    monkeypatch.setattr(attention, "_is_hopper", lambda index: True)
    monkeypatch.setattr(attention, "fa4_self_check", lambda *a, **k: None)
    attention._auto_backend.cache_clear()
    yield calls
    attention._auto_backend.cache_clear()


def test_model_with_fa4_packs_the_text_once_per_call(fake_fa4, monkeypatch):
    from mugv_kernels import attention

    model = _model()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 24, 3, 4, 6, generator=g).to(torch.bfloat16)
    text = torch.randn(2, 5, 32, generator=g).to(torch.bfloat16)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 1, 0, 0]], dtype=torch.bool)
    s = torch.tensor([0.9, 0.3])
    built = []
    from_mask = attention.PackedText.from_mask.__func__

    def counting(cls, m):
        built.append(m)
        return from_mask(cls, m)

    monkeypatch.setattr(attention.PackedText, "from_mask", classmethod(counting))
    with torch.no_grad():
        ref = model(x, s, text, mask, attention_kwargs={"backend": "sdpa"}).sample
        assert built == [] and fake_fa4 == []
        out = model(x, s, text, mask, attention_kwargs={"backend": "auto"}).sample
    assert len(built) == 1  # packed once, used by both layers
    assert len(fake_fa4) == 2 and fake_fa4[0][1] == [0, 5, 7]
    rel = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
    assert rel < 2e-2


def test_fa4_paths_under_torch_compile_equal_eager(fake_fa4):
    """Dynamo traces the blocks around the FA4 calls (graph breaks) and the packed text; the
    result equals eager (backend "eager": Dynamo only, no code generation)."""
    model = _model()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 24, 3, 4, 6, generator=g).to(torch.bfloat16)
    text = torch.randn(2, 5, 32, generator=g).to(torch.bfloat16)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 1, 0, 1]], dtype=torch.bool)
    s = torch.tensor([0.9, 0.3])
    with torch.no_grad():
        eager = model(x, s, text, mask, attention_kwargs={"backend": "auto"}).sample
        n_eager = len(fake_fa4)
        for block in model.blocks:
            block.compile(backend="eager", dynamic=False)
        compiled = model(x, s, text, mask, attention_kwargs={"backend": "auto"}).sample
    assert len(fake_fa4) == 2 * n_eager  # the FA4 calls still run
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


# ------------------------------------------------- self-attention zero-padded to a wider head
def test_padded_head_dim_rules():
    from mugv_infer.models.transformer import padded_head_dim

    assert padded_head_dim("auto", 72) == 80  # FA4's SM90 forward: faster at 80 than at 72
    assert padded_head_dim("auto", 64) == 64 and padded_head_dim("auto", 24) == 24
    assert padded_head_dim(0, 72) == 72 and padded_head_dim(96, 72) == 96
    assert padded_head_dim(64, 72) == 72  # never narrower than the model's head
    with pytest.raises(ValueError, match="attention_pad_head_dim"):
        padded_head_dim(-8, 72)


@pytest.mark.parametrize("fused", [False, True])
def test_self_attention_padded_to_80_equals_unpadded_in_float64(monkeypatch, fused):
    """q, k, v zero-padded 72 -> 80 with q scaled by sqrt(80/72) inside the QK-norm weight: the
    attention (SDPA here, scale 1/sqrt(80) from the padded width) gives the model's own result
    to float64 rounding; the kernel sees head dim 80."""
    from mugv_infer.models import transformer as tr
    from mugv_kernels.rope import dit_rope_tables

    torch.manual_seed(0)
    sa = tr.SelfAttention(hidden=144, heads=2, eps=1e-6).double()
    with torch.no_grad():
        sa.q_norm_weight.uniform_(0.5, 2.0)
        sa.k_norm_weight.uniform_(0.5, 2.0)
    x = torch.randn(2, 2 + 2 * 3 * 4, 144, dtype=torch.float64) * 3
    cos, sin = dit_rope_tables((2, 3, 4), 72, torch.arange(4)[None].expand(2, 4))
    cos, sin = cos.double(), sin.double()
    seen = []
    dense = tr.dense_attention

    def recording(q, k, v, backend, **kw):
        seen.append((q.shape[-1], k.shape[-1], v.shape[-1]))
        return dense(q, k, v, backend, **kw)

    monkeypatch.setattr(tr, "dense_attention", recording)
    with torch.no_grad():
        sa.pad_head_dim = 72
        plain = sa(x, cos, sin, x.shape[1], fused=fused)
        # this CPU runs SDPA: make the pad decision as if FA4 ran the attention
        monkeypatch.setattr(tr, "_kernel_head_dim", lambda backend, q, width: width)
        sa.pad_head_dim = 80
        padded = sa(x, cos, sin, x.shape[1], fused=fused)
    assert seen == [(72, 72, 72), (80, 80, 80)]
    torch.testing.assert_close(padded, plain, rtol=1e-12, atol=1e-12)
    # without the q scale the result is different (the check can fail)
    q_w = sa.q_norm_weight.detach().clone()
    with torch.no_grad():
        sa.q_norm_weight.mul_((72 / 80) ** 0.5)
        wrong = sa(x, cos, sin, x.shape[1], fused=fused)
        sa.q_norm_weight.copy_(q_w)
    assert (wrong - plain).abs().max() > 1e-3


def test_model_pads_only_where_fa4_runs(fake_fa4, monkeypatch):
    """With FA4 (stand-in) the 72-wide heads run at 80 (``auto``) and agree with the unpadded
    run to bf16 rounding; ``0`` keeps 72; SDPA (the plain backend) is never padded."""
    from mugv_infer.models import MUGDiTTransformer3DModel
    from mugv_kernels import attention

    widths = []

    def dense(q, k, v, softmax_scale):
        widths.append(q.shape[-1])
        return _dense_stand_in(q, k, v, softmax_scale)

    monkeypatch.setattr(attention, "fa4_functions", lambda: (dense, _varlen_stand_in([])))
    model = MUGDiTTransformer3DModel(
        hidden_size=144, num_layers=2, num_heads=2, in_channels=24, text_dim=32
    )
    model = model.initialize_weights(0).eval().to(torch.bfloat16)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 24, 3, 4, 6, generator=g).to(torch.bfloat16)
    text = torch.randn(2, 5, 32, generator=g).to(torch.bfloat16)
    mask = torch.ones(2, 5, dtype=torch.bool)
    s = torch.tensor([0.9, 0.3])
    outs = {}
    with torch.no_grad():
        for setting in ("auto", 0):
            model.set_attention_pad_head_dim(setting)
            outs[setting] = model(x, s, text, mask, attention_kwargs={"backend": "auto"}).sample
        assert widths == [80, 80, 72, 72]
        model.set_attention_pad_head_dim("auto")
        model(x, s, text, mask, attention_kwargs={"backend": "sdpa"})
    assert widths == [80, 80, 72, 72]  # SDPA: no FA4 call, no pad
    a, b = outs["auto"].float(), outs[0].float()
    assert ((a - b).norm() / b.norm()).item() < 1e-2
