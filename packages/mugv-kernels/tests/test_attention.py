"""The one attention dispatch (mugv_kernels.attention) on CPU: backend choice, FA4's head-dim
padding for a backward, the packed-text forms of cross-attention, with FA4 replaced by PyTorch
stand-ins of its contract (the real kernels are compared on a GPU in mugv-dit's
test_gpu_fa4.py and mugv-infer's test_gpu.py). References are written out in float64 here."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F
from mugv_kernels import attention as ka


def _float64_attention(q, k, v, mask_BL=None):
    """softmax(q k^T / sqrt(D)) v per head, written out in float64: [B, N, H, D]."""
    q, k, v = q.double(), k.double(), v.double()
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
    if mask_BL is not None:
        scores = scores.masked_fill(~mask_BL[:, None, None, :], float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)


@pytest.fixture
def fake_fa4(monkeypatch):
    """A stand-in for flash_attn.cute with FA4's signature (q/k/v [B, S, H, D] or packed
    [T, H, D] with cu_seqlens, softmax_scale, returns (out, lse)), on a CPU that looks like a
    Hopper GPU whose FA4 self-check passed. Records the head dim of every call."""
    calls = []

    def dense(q, k, v, softmax_scale=None):
        calls.append(q.shape[-1])
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=softmax_scale
        ).transpose(1, 2)
        return out, None

    def varlen(q, k, v, *, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale):
        assert cu_seqlens_q.dtype == cu_seqlens_k.dtype == torch.int32
        calls.append(
            (q.shape[-1], cu_seqlens_q.tolist(), cu_seqlens_k.tolist(), max_seqlen_q, max_seqlen_k)
        )
        outs = []
        for i in range(len(cu_seqlens_q) - 1):
            qs = q[cu_seqlens_q[i] : cu_seqlens_q[i + 1]]
            ks = k[cu_seqlens_k[i] : cu_seqlens_k[i + 1]]
            vs = v[cu_seqlens_k[i] : cu_seqlens_k[i + 1]]
            assert qs.shape[0] <= max_seqlen_q and ks.shape[0] <= max_seqlen_k
            acc = torch.promote_types(q.dtype, torch.float32)
            outs.append(
                F.scaled_dot_product_attention(
                    *(t.to(acc).transpose(0, 1) for t in (qs, ks, vs)), scale=softmax_scale
                )
                .transpose(0, 1)
                .to(q.dtype)
            )
        return torch.cat(outs), None

    monkeypatch.setattr(ka, "fa4_functions", lambda: (dense, varlen))
    monkeypatch.setattr(ka, "flash_attn2_functions", lambda: None)
    monkeypatch.setattr(ka, "_cuda_index", lambda x: 0)
    monkeypatch.setattr(ka, "_is_hopper", lambda index: True)
    monkeypatch.setattr(ka, "fa4_self_check", lambda *a, **k: None)
    ka._auto_backend.cache_clear()
    yield calls
    ka._auto_backend.cache_clear()


def test_fa4_head_dims_for_training_and_inference():
    # with a backward: the exact dims, else padded (FA4's SM90 dq is wrong at 72 and 80)
    assert ka.fa4_padded_head_dim(72) == 96
    assert ka.fa4_padded_head_dim(80) == 96
    assert ka.fa4_padded_head_dim(64) == 64
    assert ka.fa4_padded_head_dim(88) == 88
    assert ka.fa4_padded_head_dim(120) == 128
    with pytest.raises(ka.AttentionBackendError, match="head dims <= 128"):
        ka.fa4_padded_head_dim(144)
    assert ka.fa4_head_dim(144, needs_backward=True) is None
    # forward only: unpadded at multiples of 8 up to 128 (the forward is exact at 72)
    assert ka.fa4_head_dim(72, needs_backward=False) == 72
    assert ka.fa4_head_dim(72, needs_backward=True) == 96
    assert ka.fa4_head_dim(12, needs_backward=False) is None
    assert ka.fa4_head_dim(136, needs_backward=False) is None


def test_fa4_dense_padding_is_exact(fake_fa4):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 37, 3, 72, generator=g, dtype=torch.float64) for _ in range(3))
    out = ka.fa4_dense(q, k, v, needs_backward=True)
    assert fake_fa4 == [96]
    assert out.shape == q.shape
    torch.testing.assert_close(out, _float64_attention(q, k, v), rtol=1e-12, atol=1e-12)
    # forward only: FA4 runs at the true head dim
    unpadded = ka.fa4_dense(q, k, v, needs_backward=False)
    assert fake_fa4 == [96, 72]
    torch.testing.assert_close(unpadded, _float64_attention(q, k, v), rtol=1e-12, atol=1e-12)


def test_fa4_dense_padding_gradients_are_exact(fake_fa4):
    g = torch.Generator().manual_seed(1)
    leaves = [torch.randn(1, 19, 2, 72, generator=g, dtype=torch.float64) for _ in range(3)]
    dout = torch.randn(1, 19, 2, 72, generator=g, dtype=torch.float64)
    a = [t.clone().requires_grad_(True) for t in leaves]
    b = [t.clone().requires_grad_(True) for t in leaves]
    ka.fa4_dense(*a).backward(dout)
    _float64_attention(*b).backward(dout)
    assert fake_fa4 == [96]
    for x, y in zip(a, b):
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-11, atol=1e-11)


def test_varlen_cross_attention_per_sample(fake_fa4):
    """Each sample's queries see only its own slice of the packed text, through the SDPA loop
    and through FA4's varlen path (padded for a backward), both equal to float64 per sample."""
    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, 11, 2, 72, generator=g, dtype=torch.float64)
    texts = [torch.randn(n, 2, 72, generator=g, dtype=torch.float64) for n in (4, 5)]
    v_texts = [torch.randn(n, 2, 72, generator=g, dtype=torch.float64) for n in (4, 5)]
    text = ka.PackedText.from_list(texts)
    v = torch.cat(v_texts)
    assert text.offsets == (0, 4, 9) and text.max_len == 5 and text.lengths == [4, 5]
    ref = torch.cat(
        [_float64_attention(q[i : i + 1], texts[i][None], v_texts[i][None]) for i in range(2)]
    )
    sdpa = ka.varlen_cross_attention(q, text.tokens_LC, v, text, backend="sdpa")
    torch.testing.assert_close(sdpa, ref, rtol=1e-12, atol=1e-12)
    assert fake_fa4 == []
    # fp64 CPU tensors never take FA4 on their own: call the kernel path directly
    fa4 = ka._varlen_kernel("fa4", q, text.tokens_LC, v, text, True)
    assert fake_fa4 == [(96, [0, 11, 22], [0, 4, 9], 11, 5)]
    torch.testing.assert_close(fa4, ref, rtol=1e-12, atol=1e-12)


def test_packed_text_from_a_mask_with_holes():
    mask = torch.tensor([[1, 0, 1, 1, 0], [0, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    p = ka.PackedText.from_mask(mask)
    assert p.index_T.tolist() == [0, 2, 3, 6, 10, 11, 12, 13, 14]
    assert p.cu_seqlens.tolist() == [0, 3, 4, 9] and p.cu_seqlens.dtype == torch.int32
    assert p.offsets == (0, 3, 4, 9) and p.max_len == 5 and p.tokens_LC is None
    x = torch.arange(15.0).view(3, 5, 1)
    assert p.gather(x).flatten().tolist() == [0, 2, 3, 6, 10, 11, 12, 13, 14]
    with pytest.raises(ValueError, match="no tokens"):
        p.split()
    with pytest.raises(ValueError, match=">= 1 token"):
        ka.PackedText.from_list([torch.zeros(2, 3), torch.zeros(0, 3)])


def test_masked_cross_attention_sdpa_and_fa4_equal_float64(fake_fa4):
    g = torch.Generator().manual_seed(0)
    b, n, length, h, d = 3, 10, 7, 2, 8
    q = torch.randn(b, n, h, d, generator=g)
    k, v = (torch.randn(b, length, h, d, generator=g) for _ in range(2))
    mask = torch.rand(b, length, generator=g) > 0.4
    mask[:, 0] = True  # every sample keeps a key
    ref = _float64_attention(q, k, v, mask)
    sdpa = ka.masked_cross_attention(q, k, v, mask, "sdpa")
    torch.testing.assert_close(sdpa.double(), ref, rtol=1e-5, atol=1e-5)
    # fp32 always takes SDPA, even under auto with FA4 at hand
    torch.testing.assert_close(ka.masked_cross_attention(q, k, v, mask, "auto"), sdpa)
    assert fake_fa4 == []
    q16, k16, v16 = (t.to(torch.bfloat16) for t in (q, k, v))
    out = ka.masked_cross_attention(q16, k16, v16, mask, "auto")
    counts = mask.sum(1)
    # forward only: unpadded; every sample's queries one segment against its valid keys
    assert fake_fa4 == [
        (d, [0, n, 2 * n, 3 * n], [0, *counts.cumsum(0).tolist()], n, int(counts.max()))
    ]
    torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=2e-2)
    # no mask: every key is valid
    no_mask = ka.masked_cross_attention(q16, k16, v16, None, "auto")
    torch.testing.assert_close(no_mask.double(), _float64_attention(q, k, v), rtol=2e-2, atol=2e-2)


def test_auto_policy(fake_fa4, monkeypatch):
    q = torch.zeros(1, 4, 2, 72, dtype=torch.bfloat16)
    assert ka.resolve_backend("auto", q, path="dense") == "fa4"
    assert ka.resolve_backend("auto", q, path="varlen", needs_backward=False) == "fa4"
    # a head dim FA4 does not take, and non-half dtypes, take SDPA
    assert ka.resolve_backend("auto", q[..., :12], needs_backward=False) == "sdpa"
    assert ka.resolve_backend("fa4", q[..., :12], needs_backward=False) == "sdpa"
    assert ka.resolve_backend("auto", q.float()) == "sdpa"
    checked = []

    def failing(path, head_dim, index, *, needs_backward):
        checked.append((path, head_dim, needs_backward))
        return f"FA4 {path} at head dim {head_dim}: out rel err 1.3"

    monkeypatch.setattr(ka, "fa4_self_check", failing)
    ka._auto_backend.cache_clear()
    assert ka.resolve_backend("auto", q, path="dense", needs_backward=False) == "sdpa"
    assert ka.resolve_backend("auto", q, path="varlen", needs_backward=True) == "sdpa"
    assert checked == [("dense", 72, False), ("varlen", 72, True)]
    # flash-attn 2 installed: auto takes it when FA4 is not used
    monkeypatch.setattr(ka, "flash_attn2_functions", lambda: (None, None))
    ka._auto_backend.cache_clear()
    assert ka.resolve_backend("auto", q) == "flash"


def test_auto_is_sdpa_on_cpu_and_explicit_kernels_need_cuda():
    x = torch.zeros(1, 2, 1, 72, dtype=torch.bfloat16)
    assert ka.resolve_backend("auto", x) == "sdpa"
    assert ka.resolve_backend("sdpa", x) == "sdpa"
    with pytest.raises(ka.AttentionBackendError, match="'fa4' needs a CUDA tensor"):
        ka.resolve_backend("fa4", x)
    with pytest.raises(ka.AttentionBackendError, match="'flash' needs a CUDA tensor"):
        ka.resolve_backend("flash", x)
    with pytest.raises(ka.AttentionBackendError, match="unknown"):
        ka.resolve_backend("xformers", x)
    assert issubclass(ka.AttentionBackendError, ValueError)


def test_dense_sdpa_equals_float64():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 9, 2, 12, generator=g, dtype=torch.float64) for _ in range(3))
    out = ka.dense_attention(q, k, v, "auto")
    torch.testing.assert_close(out, _float64_attention(q, k, v), rtol=1e-12, atol=1e-12)


def test_flash_attn_namespace_without_fa2_functions_is_not_fa2(monkeypatch):
    """flash-attn-4 installs a `flash_attn` namespace package without flash-attn 2's
    functions: that must not count as flash-attn 2."""
    namespace = types.ModuleType("flash_attn")
    monkeypatch.setitem(sys.modules, "flash_attn", namespace)
    ka.flash_attn2_functions.cache_clear()
    try:
        assert ka.flash_attn2_functions() is None
        namespace.flash_attn_func = lambda *a, **k: None
        namespace.flash_attn_varlen_func = lambda *a, **k: None
        ka.flash_attn2_functions.cache_clear()
        assert ka.flash_attn2_functions() is not None
    finally:
        ka.flash_attn2_functions.cache_clear()


def _self_check_like():
    """What the FA4 self-check does with autograd: a forward and its backward on fresh leaves
    (here with SDPA on the CPU), returning the input gradients."""
    g = torch.Generator().manual_seed(0)
    q, k, v, dout = (torch.randn(1, 8, 2, 16, generator=g, dtype=torch.float64) for _ in range(4))
    return ka._outputs(ka.sdpa, q, k, v, dout, True)


def test_self_check_runs_inside_no_grad_and_checkpoint():
    """The self-check runs lazily in the first attention call, which may sit under no_grad (a
    DPO reference forward) or inside activation checkpointing; in a fresh autograd context it
    gives the same gradients as at top level, where in place it fails (so the test can fail)."""
    from torch.utils.checkpoint import checkpoint

    expected = _self_check_like()
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="does not require grad"):
            _self_check_like()
        got = ka.in_fresh_autograd_context(_self_check_like)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    # inside checkpointing's recomputation (the first call there runs in the backward)
    def run(isolated: bool):
        calls, seen = [], {}

        def block(x):
            calls.append(1)
            if len(calls) == 2:
                check = ka.in_fresh_autograd_context if isolated else (lambda f: f())
                seen["grads"] = check(_self_check_like)
            return (x * 2) ** 2

        x = torch.ones(3, requires_grad=True)
        checkpoint(block, x, use_reentrant=False).sum().backward()
        torch.testing.assert_close(x.grad, torch.full((3,), 8.0))
        return seen["grads"]

    with pytest.raises(torch.utils.checkpoint.CheckpointError):
        run(isolated=False)
    for a, b in zip(run(isolated=True), expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="boom"):
        ka.in_fresh_autograd_context(lambda: (_ for _ in ()).throw(ValueError("boom")))


def test_self_check_outputs_run_the_hook_between_forward_and_backward():
    """The self-check fills freed memory with NaN after the forward and before the backward
    (so that an accumulator the backward allocates comes from NaN memory): the hook runs
    between the two; the gradients equal those without the hook."""
    q, k, v, dout = (torch.randn(1, 5, 2, 8, dtype=torch.float64) for _ in range(4))
    events = []

    def fn(qq, kk, vv):
        events.append("forward")
        out = ka.sdpa(qq, kk, vv)
        if out.requires_grad:
            out.register_hook(lambda grad: events.append("backward"))
        return out

    def hook():
        events.append("hook")

    got = ka._outputs(fn, q, k, v, dout, True, hook)
    assert events == ["forward", "hook", "backward"]
    plain = ka._outputs(fn, q, k, v, dout, True)
    for a, b in zip(got, plain):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert ka._outputs(fn, q, k, v, dout, False, hook)[0].shape == q.shape
    assert events.count("hook") == 1  # no backward, no hook
