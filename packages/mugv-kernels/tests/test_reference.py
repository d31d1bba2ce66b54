"""The PyTorch references against independent float64 formulas, and the public API on CPU."""

from __future__ import annotations

import mugv_kernels as mk
import pytest
import torch
from mugv_kernels import reference as ref

from .conftest import rel_err

B, L, D = 2, 7, 12


def _manual_ln(x: torch.Tensor, eps: float) -> torch.Tensor:
    mean = x.sum(-1, keepdim=True) / x.shape[-1]
    var = ((x - mean) ** 2).sum(-1, keepdim=True) / x.shape[-1]
    return (x - mean) / torch.sqrt(var + eps)


def _randd(*shape, gen):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("layout", ["sample", "sample_1", "token", "branch"])
def test_modulated_layer_norm_matches_manual_formula(layout, gen):
    x = _randd(B, L, D, gen=gen) * 3 + 1
    mask = None
    if layout == "branch":
        shift, scale = _randd(B, 2, D, gen=gen), _randd(B, 2, D, gen=gen)
        mask = torch.rand(B, L, generator=gen) < 0.5
    elif layout == "token":
        shift, scale = _randd(B, L, D, gen=gen), _randd(B, L, D, gen=gen)
    else:
        shift, scale = _randd(B, D, gen=gen), _randd(B, D, gen=gen)
        if layout == "sample_1":
            shift, scale = shift[:, None], scale[:, None]
    out = mk.modulated_layer_norm(x, shift, scale, token_branch=mask, eps=1e-6)
    expected = torch.empty_like(x)
    for b in range(B):
        for t in range(L):
            if layout == "branch":
                br = int(mask[b, t])
                sh, sc = shift[b, br], scale[b, br]
            elif layout == "token":
                sh, sc = shift[b, t], scale[b, t]
            else:
                sh, sc = shift.reshape(B, D)[b], scale.reshape(B, D)[b]
            expected[b, t] = _manual_ln(x[b, t], 1e-6) * (1 + sc) + sh
    assert rel_err(out, expected) < 1e-12


def test_modulated_layer_norm_keeps_dtype_and_accumulates_in_fp32(gen):
    x = (_randd(B, L, D, gen=gen) * 4 + 100).to(torch.bfloat16)
    shift, scale = _randd(B, D, gen=gen).bfloat16(), _randd(B, D, gen=gen).bfloat16()
    out = mk.modulated_layer_norm(x, shift, scale)
    assert out.dtype == torch.bfloat16
    expected = ref.modulated_layer_norm_ref(x.double(), shift.double(), scale.double())
    assert rel_err(out, expected) < 1e-2


def test_gated_residual_matches_manual_formula(gen):
    x, y = _randd(B, L, D, gen=gen), _randd(B, L, D, gen=gen)
    gate, shift, scale = (_randd(B, 2, D, gen=gen) for _ in range(3))
    bias = _randd(D, gen=gen)
    mask = torch.rand(B, L, generator=gen) < 0.5
    h, hn = mk.gated_residual_modulated_norm(x, y, gate, shift, scale, bias=bias, token_branch=mask)
    sel = mask.long()[..., None, None].expand(B, L, 1, D)
    pick = lambda t: torch.gather(t[:, None].expand(B, L, 2, D), 2, sel)[:, :, 0]  # noqa: E731
    h_exp = x + pick(gate) * (y + bias)
    assert rel_err(h, h_exp) < 1e-12
    assert rel_err(hn, _manual_ln(h_exp, 1e-6) * (1 + pick(scale)) + pick(shift)) < 1e-12


def test_gated_residual_norm_reads_rounded_h(gen):
    """The norm of the bf16 result equals the unfused two-step computation exactly."""
    x, y = _randd(B, L, D, gen=gen).bfloat16(), _randd(B, L, D, gen=gen).bfloat16()
    gate, shift, scale = (_randd(B, D, gen=gen).bfloat16() for _ in range(3))
    h, hn = mk.gated_residual_modulated_norm(x, y, gate, shift, scale)
    assert torch.equal(hn, mk.modulated_layer_norm(h, shift, scale))


def test_qk_rmsnorm_rope_matches_complex_rotation(gen):
    q, k = _randd(B, L, 3, 12, gen=gen), _randd(B, L, 2, 12, gen=gen)
    qw, kw = _randd(12, gen=gen), _randd(12, gen=gen)
    angles = _randd(L, 6, gen=gen)
    q_out, k_out = mk.qk_rmsnorm_rope3d(q, k, qw, kw, angles.cos(), angles.sin())
    for x, w, out in ((q, qw, q_out), (k, kw, k_out)):
        normed = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6) * w
        as_complex = torch.view_as_complex(normed.reshape(*x.shape[:-1], 6, 2).contiguous())
        rotated = as_complex * torch.polar(torch.ones_like(angles), angles)[:, None, :]
        assert rel_err(out, torch.view_as_real(rotated).flatten(-2)) < 1e-12


def test_group_norm_silu_matches_manual_formula(gen):
    x = _randd(2, 6, 3, 4, 5, gen=gen) * 2 + 5
    w, b = _randd(6, gen=gen), _randd(6, gen=gen)
    out = mk.group_norm_silu(x, 3, w, b, eps=1e-6)
    groups = x.reshape(2, 3, -1)
    mean = groups.mean(-1, keepdim=True)
    var = ((groups - mean) ** 2).mean(-1, keepdim=True)
    z = ((groups - mean) / torch.sqrt(var + 1e-6)).reshape_as(x)
    z = z * w[None, :, None, None, None] + b[None, :, None, None, None]
    assert rel_err(out, z * torch.sigmoid(z)) < 1e-12


@pytest.mark.parametrize(
    ("shape", "fmt"),
    [((2, 8, 5, 7), torch.channels_last), ((2, 8, 3, 5, 7), torch.channels_last_3d)],
)
def test_group_norm_channels_last_layout_is_read_as_stored(shape, fmt):
    from mugv_kernels.group_norm import _as_NSC, _from_NSC, is_channels_last

    x = torch.randn(shape).contiguous(memory_format=fmt)
    assert is_channels_last(x) and not is_channels_last(x.contiguous())
    x_NSC = _as_NSC(x)  # the [N, S, C] view the Triton kernels read: no copy
    assert x_NSC.data_ptr() == x.data_ptr() and x_NSC.is_contiguous()
    assert torch.equal(x_NSC, x.flatten(2).transpose(1, 2))
    back = _from_NSC(x_NSC, x.shape)
    assert back.stride() == x.stride() and torch.equal(back, x)


def test_references_are_differentiable_in_float64(gen):
    x = _randd(2, 3, 4, gen=gen).requires_grad_()
    y = _randd(2, 3, 4, gen=gen).requires_grad_()
    mods = [_randd(2, 2, 4, gen=gen).requires_grad_() for _ in range(3)]
    bias = _randd(4, gen=gen).requires_grad_()
    mask = torch.tensor([[True, False, True], [False, False, True]])
    assert torch.autograd.gradcheck(
        lambda *a: mk.gated_residual_modulated_norm(*a[:5], bias=a[5], token_branch=mask),
        (x, y, *mods, bias),
    )
    gx = _randd(2, 4, 3, 2, gen=gen).requires_grad_()
    w = _randd(4, gen=gen).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: mk.group_norm_silu(a, 2, b, None), (gx, w))


def test_cpu_default_takes_reference_and_forced_triton_needs_interpreter(gen, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.randn(B, L, D, generator=gen)
    shift, scale = torch.randn(B, D, generator=gen), torch.randn(B, D, generator=gen)
    assert torch.equal(
        mk.modulated_layer_norm(x, shift, scale), ref.modulated_layer_norm_ref(x, shift, scale)
    )
    if mk.triton_available():
        with pytest.raises(ValueError, match="TRITON_INTERPRET"):
            mk.modulated_layer_norm(x, shift, scale, use_triton=True)


@pytest.mark.parametrize(
    ("shift_shape", "mask", "match"),
    [
        ((B, D + 1), None, "hidden size"),
        ((B, 3, D), None, "fits none"),
        ((B, L, D), "mask", r"\[\.\.\., 2, 12\]"),
        ((3, D), None, "broadcast"),
    ],
)
def test_bad_modulation_shapes_are_refused(shift_shape, mask, match):
    x = torch.randn(B, L, D)
    token_branch = torch.zeros(B, L, dtype=torch.bool) if mask else None
    with pytest.raises(ValueError, match=match):
        mk.modulated_layer_norm(
            x, torch.randn(shift_shape), torch.randn(shift_shape), token_branch=token_branch
        )


def test_mixed_layouts_and_bad_masks_are_refused():
    x = torch.randn(B, L, D)
    with pytest.raises(ValueError, match="one layout"):
        mk.gated_residual_modulated_norm(
            x, x, torch.randn(B, D), torch.randn(B, L, D), torch.randn(B, D)
        )
    with pytest.raises(ValueError, match="bool"):
        mk.modulated_layer_norm(
            x, torch.randn(B, 2, D), torch.randn(B, 2, D), token_branch=torch.zeros(B, L)
        )


def test_bad_qk_and_group_norm_inputs_are_refused():
    q = torch.randn(1, 4, 2, 8)
    cos = torch.ones(4, 4)
    with pytest.raises(ValueError, match="cos"):
        mk.qk_rmsnorm_rope3d(q, q, torch.ones(8), torch.ones(8), cos[:3], cos)
    with pytest.raises(ValueError, match="q_weight"):
        mk.qk_rmsnorm_rope3d(q, q, torch.ones(6), torch.ones(8), cos, cos)
    with pytest.raises(ValueError, match="num_groups=3"):
        mk.group_norm_silu(torch.randn(1, 8, 4), 3, None, None)


def test_public_ops_trace_under_torch_compile_fullgraph(gen):
    """On CPU (reference path) every op compiles without graph breaks, backward included."""
    x = torch.randn(2, 5, 8, generator=gen, requires_grad=True)
    shift, scale = torch.randn(2, 2, 8, generator=gen), torch.randn(2, 2, 8, generator=gen)
    mask = torch.rand(2, 5, generator=gen) < 0.5

    def block(x):
        h, hn = mk.gated_residual_modulated_norm(x, x, shift, shift, scale, token_branch=mask)
        return mk.modulated_layer_norm(hn, shift, scale, token_branch=mask) + h

    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    out = compiled(x)
    assert torch.allclose(out, block(x), atol=1e-5)
    (grad,) = torch.autograd.grad(out.sum(), x)
    (grad_ref,) = torch.autograd.grad(block(x).sum(), x)
    assert torch.allclose(grad, grad_ref, atol=1e-4)


def test_per_sample_rope_tables_equal_per_sample_calls(gen):
    q, k = _randd(3, L, 2, 12, gen=gen), _randd(3, L, 1, 12, gen=gen)
    w = _randd(12, gen=gen)
    angles = _randd(3, L, 6, gen=gen)
    q_out, k_out = mk.qk_rmsnorm_rope3d(q, k, w, w, angles.cos(), angles.sin())
    for i in range(3):
        qi, ki = mk.qk_rmsnorm_rope3d(
            q[i : i + 1], k[i : i + 1], w, w, angles[i].cos(), angles[i].sin()
        )
        assert torch.equal(q_out[i : i + 1], qi) and torch.equal(k_out[i : i + 1], ki)
    with pytest.raises(ValueError, match=r"B=3 \(or 1\)"):
        mk.qk_rmsnorm_rope3d(q, k, w, w, angles[:2].cos(), angles[:2].sin())
