"""The attention dispatch on CPU: the FA4 packed-text cross-attention path with FA4 replaced
by a per-segment PyTorch stand-in (the real kernel is compared on a GPU in test_gpu.py)."""

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
    from mugv_infer.models import attention

    calls: list = []
    monkeypatch.setattr(attention, "fa4_varlen_forward", lambda: _varlen_stand_in(calls))
    monkeypatch.setattr(attention, "fa4_forward", lambda: _dense_stand_in)
    monkeypatch.setattr(attention, "_on_hopper", lambda x: True)
    monkeypatch.setattr(attention, "_device_index", lambda x: 0)
    monkeypatch.setattr(attention, "fa4_self_check", lambda kind, head_dim, index: None)
    return calls


def test_packed_text_from_a_mask_with_holes():
    from mugv_infer.models.attention import PackedText

    mask = torch.tensor([[1, 0, 1, 1, 0], [0, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    p = PackedText.from_mask(mask)
    assert p.index_T.tolist() == [0, 2, 3, 6, 10, 11, 12, 13, 14]
    assert p.cu_k.tolist() == [0, 3, 4, 9] and p.cu_k.dtype == torch.int32
    assert p.max_k == 5


def test_fa4_packed_cross_attention_equals_masked_sdpa(fake_fa4):
    from mugv_infer.models.attention import masked_cross_attention

    g = torch.Generator().manual_seed(0)
    b, n, length, h, d = 3, 10, 7, 2, 8
    q = torch.randn(b, n, h, d, generator=g)
    k, v = (torch.randn(b, length, h, d, generator=g) for _ in range(2))
    mask = torch.rand(b, length, generator=g) > 0.4
    mask[:, 0] = True  # every sample keeps a key
    ref = masked_cross_attention(q, k, v, mask, "sdpa")
    # fp32 always takes SDPA
    torch.testing.assert_close(masked_cross_attention(q, k, v, mask, "auto"), ref)
    assert fake_fa4 == []
    q16, k16, v16 = (t.to(torch.bfloat16) for t in (q, k, v))
    out = masked_cross_attention(q16, k16, v16, mask, "auto")
    counts = mask.sum(1)
    assert fake_fa4 == [
        ([0, n, 2 * n, 3 * n], [0, *counts.cumsum(0).tolist()], n, int(counts.max()))
    ]
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    # no mask: every key is valid
    no_mask = masked_cross_attention(q16, k16, v16, None, "auto")
    torch.testing.assert_close(
        no_mask.float(), masked_cross_attention(q, k, v, None), rtol=2e-2, atol=2e-2
    )


def test_model_with_fa4_packs_the_text_once_per_call(fake_fa4, monkeypatch):
    from mugv_infer.models import attention

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


def test_auto_keeps_sdpa_when_the_self_check_fails(fake_fa4, monkeypatch):
    from mugv_infer.models import attention

    q = torch.zeros(1, 4, 2, 72, dtype=torch.bfloat16)
    assert attention.resolve_backend("auto", q) == "fa4"
    assert attention.cross_attention_backend("auto", q) == "fa4"
    checked = []

    def failing(kind, head_dim, index):
        checked.append((kind, head_dim))
        return f"FA4 {kind} forward rel err 1.3 at {head_dim}"

    monkeypatch.setattr(attention, "fa4_self_check", failing)
    assert attention.resolve_backend("auto", q) == "sdpa"
    assert attention.cross_attention_backend("auto", q) == "sdpa"
    assert checked == [("dense", 72), ("varlen", 72)]
    assert attention.cross_attention_backend("sdpa", q) == "sdpa"
    with pytest.raises(ValueError, match="unknown"):
        attention.cross_attention_backend("flash", q)
    with pytest.raises(ValueError, match="needs a CUDA tensor"):
        attention.cross_attention_backend("fa4", q)  # a CPU tensor


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
