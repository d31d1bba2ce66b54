"""Attention backend selection and FlashAttention-4 head-dim padding (CPU checks; the GPU
checks against float64 live in test_gpu_fa4.py)."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F
from mugv_dit.model import attention_backends as ab


def _float64_attention(q, k, v):
    """softmax(q k^T / sqrt(D)) v per head, written out in float64: [B, N, H, D]."""
    q, k, v = q.double(), k.double(), v.double()
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)


@pytest.fixture
def fake_fa4(monkeypatch):
    """A stand-in for flash_attn.cute with FA4's signature (q/k/v [B, S, H, D], softmax_scale,
    returns (out, lse)) that refuses head dims FA4 gets wrong, so only the padding under test
    can make a call at head dim 72 succeed."""
    calls = []

    def dense(q, k, v, softmax_scale=None):
        calls.append(q.shape[-1])
        assert q.shape[-1] in ab.FA4_EXACT_HEAD_DIMS, q.shape
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=softmax_scale
        ).transpose(1, 2)
        return out, None

    def varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale):
        calls.append(q.shape[-1])
        assert q.shape[-1] in ab.FA4_EXACT_HEAD_DIMS, q.shape
        outs = []
        for i in range(len(cu_seqlens_q) - 1):
            qs = q[cu_seqlens_q[i] : cu_seqlens_q[i + 1]]
            ks = k[cu_seqlens_k[i] : cu_seqlens_k[i + 1]]
            vs = v[cu_seqlens_k[i] : cu_seqlens_k[i + 1]]
            outs.append(dense(qs[None], ks[None], vs[None], softmax_scale)[0][0])
        return torch.cat(outs), None

    monkeypatch.setattr(ab, "fa4_functions", lambda: (dense, varlen))
    return calls


def test_padded_head_dims():
    assert ab.fa4_padded_head_dim(72) == 96
    assert ab.fa4_padded_head_dim(80) == 96
    assert ab.fa4_padded_head_dim(64) == 64
    assert ab.fa4_padded_head_dim(88) == 88
    assert ab.fa4_padded_head_dim(120) == 128
    with pytest.raises(ValueError, match="head dims <= 128"):
        ab.fa4_padded_head_dim(144)


def test_fa4_dense_padding_is_exact(fake_fa4):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 37, 3, 72, generator=g, dtype=torch.float64) for _ in range(3))
    out = ab.fa4_dense(q, k, v)
    assert fake_fa4 == [96]
    assert out.shape == q.shape
    torch.testing.assert_close(out, _float64_attention(q, k, v), rtol=1e-12, atol=1e-12)


def test_fa4_dense_padding_gradients_are_exact(fake_fa4):
    g = torch.Generator().manual_seed(1)
    leaves = [torch.randn(1, 19, 2, 72, generator=g, dtype=torch.float64) for _ in range(3)]
    dout = torch.randn(1, 19, 2, 72, generator=g, dtype=torch.float64)
    a = [t.clone().requires_grad_(True) for t in leaves]
    b = [t.clone().requires_grad_(True) for t in leaves]
    ab.fa4_dense(*a).backward(dout)
    _float64_attention(*b).backward(dout)
    for x, y in zip(a, b):
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-11, atol=1e-11)


def test_varlen_cross_attention_per_sample(fake_fa4, monkeypatch):
    """Each sample's queries see only its own slice of the packed text, through the FA4 path
    and through the SDPA loop, and both equal a float64 per-sample reference."""
    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, 11, 2, 72, generator=g, dtype=torch.float64)
    k = torch.randn(9, 2, 72, generator=g, dtype=torch.float64)
    v = torch.randn(9, 2, 72, generator=g, dtype=torch.float64)
    offsets = (0, 4, 9)
    cu = torch.tensor(offsets, dtype=torch.int32)
    ref = torch.cat(
        [
            _float64_attention(q[i : i + 1], k[None, lo:hi], v[None, lo:hi])
            for i, (lo, hi) in enumerate(((0, 4), (4, 9)))
        ]
    )
    sdpa = ab.varlen_cross_attention(q, k, v, cu, offsets, backend="sdpa")
    torch.testing.assert_close(sdpa, ref, rtol=1e-12, atol=1e-12)
    # the FA4 branch runs for CUDA tensors only: route a CPU call through it
    monkeypatch.setattr(ab, "resolve_backend", lambda requested, x: "fa4")
    fa4 = ab.varlen_cross_attention(q, k, v, cu, offsets, backend="fa4")
    assert fake_fa4 == [96, 96, 96]
    torch.testing.assert_close(fa4, ref, rtol=1e-12, atol=1e-12)


def test_auto_is_sdpa_on_cpu_and_explicit_kernels_need_cuda():
    x = torch.zeros(1, 2, 1, 72, dtype=torch.bfloat16)
    assert ab.resolve_backend("auto", x) == "sdpa"
    assert ab.resolve_backend("sdpa", x) == "sdpa"
    with pytest.raises(RuntimeError, match="fa4 needs"):
        ab.resolve_backend("fa4", x)
    with pytest.raises(RuntimeError, match="flash needs"):
        ab.resolve_backend("flash", x)
    with pytest.raises(ValueError, match="not one of"):
        ab.resolve_backend("xformers", x)


def test_flash_attn_namespace_without_fa2_functions_is_not_fa2(monkeypatch):
    """flash-attn-4 installs a `flash_attn` namespace package without flash-attn 2's
    functions: that must not count as flash-attn 2."""
    namespace = types.ModuleType("flash_attn")
    monkeypatch.setitem(sys.modules, "flash_attn", namespace)
    ab.flash_attn2_functions.cache_clear()
    try:
        assert ab.flash_attn2_functions() is None
        namespace.flash_attn_func = lambda *a, **k: None
        namespace.flash_attn_varlen_func = lambda *a, **k: None
        ab.flash_attn2_functions.cache_clear()
        assert ab.flash_attn2_functions() is not None
    finally:
        ab.flash_attn2_functions.cache_clear()


def test_model_runs_with_explicit_sdpa_backend(megatron_single, debug_cfg):
    from mugv_dit.config import RuntimeConfig
    from mugv_dit.model import MUGDiT, PackedText, megatron_config

    cfg = debug_cfg
    torch.manual_seed(0)
    model = MUGDiT(cfg, megatron_config(cfg), runtime=RuntimeConfig(attention_backend="sdpa"))
    assert all(block.self_attention.backend == "sdpa" for block in model.blocks)
    x = torch.randn(1, cfg.in_channels, 2, 4, 4)
    out = model(
        x,
        torch.rand(1),
        PackedText.from_list([torch.randn(3, cfg.text_dim)]),
        fps_B=torch.tensor([24.0]),
    )
    assert out.shape == (1, cfg.out_channels, 2, 4, 4) and torch.isfinite(out).all()
