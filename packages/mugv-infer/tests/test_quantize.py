"""FP8 (e4m3, row-wise scales) linears: the arithmetic against a float64 reference written
from the spec (its own e4m3 rounding), the layer-by-layer load-time check and its fallback."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from mugv_infer_fixtures import TEXT_DIM
from torch import nn


def e4m3_round(v: float) -> float:
    """Round to the nearest float8 e4m3fn value (3 mantissa bits, exponent bias 7, min
    normal 2**-6, subnormal step 2**-9, max 448), ties to even: written from the format."""
    if v == 0:
        return 0.0
    a = abs(v)
    e = max(math.floor(math.log2(a)), -6)
    step = 2.0 ** (e - 3)
    q = a / step
    r = math.floor(q)
    frac = q - r
    if frac > 0.5 or (frac == 0.5 and r % 2 == 1):
        r += 1
    return math.copysign(min(r * step, 448.0), v)


def reference_fp8_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None):
    """float64: per-row scales (amax / 448), values rounded with :func:`e4m3_round`."""

    def quant(t):
        t = t.detach().double()
        s = t.abs().amax(1, keepdim=True) / 448.0
        s = torch.where(s > 0, s, torch.ones_like(s))
        q = (t / s).apply_(e4m3_round)
        return q, s

    xq, sx = quant(x)
    wq, sw = quant(w)
    y = (xq @ wq.t()) * sx * sw.t()
    return y if b is None else y + b.double()


def test_e4m3_reference_rounding_is_torchs_cast():
    # the test's own rounding agrees with torch's float8 cast on every representable range
    g = torch.Generator().manual_seed(0)
    v = torch.cat(
        [torch.randn(2000, generator=g) * 10 ** torch.empty(2000).uniform_(-4, 2.6, generator=g)]
    )
    v = v.clamp(-448, 448).double()
    ours = v.clone().apply_(e4m3_round)
    torch_cast = v.to(torch.float8_e4m3fn).double()
    assert torch.equal(ours, torch_cast)


def test_quantize_rowwise_scales_and_zero_rows():
    from mugv_infer.quantize import quantize_rowwise

    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [896.0, 1.0, -3.0]])
    q, s = quantize_rowwise(x)
    assert q.dtype == torch.float8_e4m3fn
    assert torch.equal(s[:, 0], torch.tensor([2.0 / 448, 1.0, 2.0]))
    assert q[0, 1].float() == -448.0 and q[2, 0].float() == 448.0
    assert torch.equal(q[1].float(), torch.zeros(3))


@pytest.mark.parametrize("bias", [True, False])
def test_emulated_fp8_linear_matches_float64_reference(bias):
    from mugv_infer.quantize import Fp8Linear

    g = torch.Generator().manual_seed(1)
    lin = nn.Linear(64, 48, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(48, 64, generator=g) * 0.05)
        if bias:
            lin.bias.copy_(torch.randn(48, generator=g))
    x = torch.randn(2, 5, 64, generator=g) * 3
    q = Fp8Linear.from_linear(lin, "emulated")
    y = q(x)
    ref = reference_fp8_linear(x.reshape(-1, 64), lin.weight, lin.bias).reshape(2, 5, 48)
    assert y.shape == (2, 5, 48) and y.dtype == torch.float32
    assert float((y.double() - ref).norm() / ref.norm()) < 1e-6
    # and it is float8, not the float32 product: about 4% from the exact linear
    exact = lin(x).double()
    assert 0.005 < float((y.double() - exact).norm() / exact.norm()) < 0.08


def test_scaled_mm_rowwise_matches_float64_reference():
    from mugv_infer.quantize import quantize_rowwise, scaled_mm_rowwise

    g = torch.Generator().manual_seed(2)
    x, w = torch.randn(32, 64, generator=g), torch.randn(48, 64, generator=g) * 0.1
    xq, sx = quantize_rowwise(x)
    wq, sw = quantize_rowwise(w)
    try:
        y = scaled_mm_rowwise(xq, sx, wq, sw, torch.float32)
    except (RuntimeError, NotImplementedError) as e:  # some builds have no CPU _scaled_mm
        pytest.skip(f"torch._scaled_mm on the CPU: {e}")
    ref = reference_fp8_linear(x, w, None)
    assert float((y.double() - ref).norm() / ref.norm()) < 1e-5


def test_fp8_linear_keeps_its_weights_through_moves_and_casts():
    from mugv_infer.quantize import Fp8Linear

    q = Fp8Linear.from_linear(nn.Linear(32, 16), "emulated")
    w, s = q.weight.clone(), q.weight_scale.clone()
    q.to(torch.bfloat16)
    assert q.weight.dtype == torch.float8_e4m3fn and q.weight_scale.dtype == torch.float32
    assert torch.equal(q.weight.float(), w.float()) and torch.equal(q.weight_scale, s)
    assert q.bias.dtype == torch.bfloat16
    assert q(torch.randn(3, 32, dtype=torch.bfloat16)).dtype == torch.bfloat16


def _tiny_dit(seed=0):
    from mugv_infer.models import MUGDiTTransformer3DModel

    model = MUGDiTTransformer3DModel(
        hidden_size=48, num_layers=2, num_heads=4, in_channels=8, text_dim=TEXT_DIM
    )
    return model.initialize_weights(seed).eval()


def _dit_inputs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 8, 2, 4, 4, generator=g)
    text = torch.randn(2, 6, TEXT_DIM, generator=g)
    return x, torch.tensor([0.7, 0.7]), text, torch.ones(2, 6, dtype=torch.bool)


def test_quantize_fp8_replaces_every_block_linear_and_stays_close():
    from mugv_infer.quantize import BLOCK_LINEARS, Fp8Linear, load_time_probes, quantize_fp8

    model = _tiny_dit()
    inputs = _dit_inputs(model)
    with torch.no_grad():
        ref = model(*inputs).sample
    probes = load_time_probes(model, "cpu")
    assert set(probes) == {f"blocks.{i}.{p}" for i in range(2) for p in BLOCK_LINEARS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "emulated on cpu"
        report = quantize_fp8(model, probes=probes)
    assert report.backend == "emulated" and not report.kept
    assert len(report.quantized) == 2 * len(BLOCK_LINEARS)
    assert all(0 < c.rel_l2 < 0.08 for c in report.layers)
    assert isinstance(model.blocks[1].mlp.fc2, Fp8Linear)
    assert isinstance(model.t_block, nn.Linear) and isinstance(model.final_layer.linear, nn.Linear)
    with torch.no_grad():
        out = model(*inputs).sample
    rel = float((out - ref).norm() / ref.norm())
    assert 1e-4 < rel < 0.1


def test_self_check_falls_back_layer_by_layer():
    """A layer whose inputs carry a large shared offset (the per-row scale swallows the
    signal that its weights read) fails the check and stays bf16; the others go float8."""
    from mugv_infer.quantize import Fp8Linear, load_time_probes, quantize_fp8

    model = _tiny_dit()
    probes = load_time_probes(model, "cpu")
    bad = "blocks.0.mlp.fc2"
    fc2 = model.blocks[0].mlp.fc2
    with torch.no_grad():  # rows summing to zero: the offset cancels exactly in the weights
        fc2.weight.sub_(fc2.weight.mean(1, keepdim=True))
    g = torch.Generator().manual_seed(3)
    probes[bad] = 1000.0 + torch.randn(64, fc2.in_features, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = quantize_fp8(model, probes=probes)
    kept = {c.name: c for c in report.kept}
    assert set(kept) == {bad}
    assert kept[bad].rel_l2 > 0.08 and "rel L2" in kept[bad].reason
    assert model.blocks[0].mlp.fc2 is fc2
    assert isinstance(model.blocks[0].mlp.fc1, Fp8Linear)
    assert isinstance(model.blocks[1].mlp.fc2, Fp8Linear)
    assert report.summary()["kept_bf16"] == [{"layer": bad, "reason": kept[bad].reason}]


def test_non_finite_layer_is_kept():
    from mugv_infer.quantize import quantize_fp8

    model = _tiny_dit()
    probes = {"blocks.1.cross_attention.q": torch.full((4, 48), float("inf"))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = quantize_fp8(model, probes=probes)
    assert [(c.name, c.reason) for c in report.kept] == [
        ("blocks.1.cross_attention.q", "non-finite output")
    ]


def test_backend_choice_and_shape_refusal():
    from mugv_infer.quantize import resolve_backend, shape_refusal

    with pytest.warns(UserWarning, match="emulated"):
        assert resolve_backend("auto", "cpu") == "emulated"
    with pytest.raises(ValueError, match="compute capability"):
        resolve_backend("scaled_mm", "cpu")
    with pytest.raises(ValueError, match="unknown"):
        resolve_backend("int4", "cpu")
    assert "multiple of 16" in shape_refusal(nn.Linear(24, 72), "scaled_mm")
    assert shape_refusal(nn.Linear(32, 64), "scaled_mm") == ""
    assert shape_refusal(nn.Linear(24, 72), "emulated") == ""


def test_eager_row_chunks_give_the_same_product(monkeypatch):
    from mugv_infer import quantize

    g = torch.Generator().manual_seed(4)
    q = quantize.Fp8Linear.from_linear(nn.Linear(32, 16), "emulated")
    x = torch.randn(3, 7, 32, generator=g)
    whole = q(x)
    monkeypatch.setattr(quantize, "EAGER_CHUNK", 32 * 4)  # 4 rows at a time: 6 chunks
    assert torch.equal(q(x), whole)


# ------------------------------------------------------------ weight-only mode, kept layers
@pytest.mark.parametrize("bias", [True, False])
def test_weight_only_fp8_linear_matches_float64_reference(bias):
    """float8 storage, the activations as they are: y = x (W_q s_w)^T + b; per layer about
    0.026 from the exact linear (the weight rounding alone), below the dynamic mode's."""
    from mugv_infer.quantize import Fp8Linear

    g = torch.Generator().manual_seed(5)
    lin = nn.Linear(128, 96, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(96, 128, generator=g) * 0.05)
        if bias:  # small: the errors below are the product's
            lin.bias.copy_(torch.randn(96, generator=g) * 0.01)
    x = torch.randn(64, 128, generator=g)
    wo = Fp8Linear.from_linear(lin, "emulated", weight_only=True)
    w = lin.weight.detach().double()
    s = w.abs().amax(1, keepdim=True) / 448.0
    w_q = (w / s).apply_(e4m3_round) * s
    ref = x.double() @ w_q.t() + (lin.bias.double() if bias else 0)
    y = wo(x)
    assert float((y.double() - ref).norm() / ref.norm()) < 1e-6
    exact = lin(x).double()
    err_wo = float((y.double() - exact).norm() / exact.norm())
    dyn = Fp8Linear.from_linear(lin, "emulated")(x).double()
    err_dyn = float((dyn - exact).norm() / exact.norm())
    assert 0.015 < err_wo < 0.035 < err_dyn < 0.05


def test_keep_patterns_and_weight_only_mode_on_the_dit():
    from mugv_infer.quantize import KEPT_BY_CHOICE, Fp8Linear, load_time_probes, quantize_fp8

    model = _tiny_dit()
    probes = load_time_probes(model, "cpu")
    keep = ["blocks.0.*", "*.mlp.fc2"]
    report = quantize_fp8(model, probes=probes, mode="weight_only", keep=keep)
    kept = {c.name for c in report.kept}
    assert kept == {f"blocks.0.{p}" for p in (
        "self_attention.qkv", "self_attention.proj", "cross_attention.q", "cross_attention.kv",
        "cross_attention.proj", "mlp.fc1", "mlp.fc2")} | {"blocks.1.mlp.fc2"}  # fmt: skip
    assert all(c.reason == KEPT_BY_CHOICE for c in report.kept)
    assert type(model.blocks[0].self_attention.qkv) is nn.Linear
    assert type(model.blocks[1].mlp.fc2) is nn.Linear
    fc1 = model.blocks[1].mlp.fc1
    assert isinstance(fc1, Fp8Linear) and fc1.weight_only and "weight_only" in repr(fc1)
    summary = report.summary()
    assert summary["mode"] == "weight_only" and summary["kept_by_choice"] == 8
    assert summary["kept_bf16"] == [] and summary["quantized"] == 6  # failures only listed
    assert all(c.rel_l2 < 0.05 for c in report.layers if c.rel_l2 is not None)
    with pytest.raises(ValueError, match="fp8_mode"):
        quantize_fp8(_tiny_dit(), mode="int8")
