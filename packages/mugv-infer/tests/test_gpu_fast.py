"""GPU tests of issue 27 (``uv run pytest -m gpu packages/mugv-infer/tests/test_gpu_fast.py``):
the float8 product of ``torch._scaled_mm`` and of torchao against the float64 reference of
the row-wise-scaled product, the load-time check on CUDA, the CUDA-graphed block stack
against eager (with the step cache), FA4 at head dim 80 for the 72-wide heads against 72 and
float64 SDPA, the weight-only float8 linear. The low-memory recipe's GPU memory is measured by the
benchmark (``run_h200.sh lowmem``), its settings tested on the CPU (test_low_memory.py)."""

from __future__ import annotations

import warnings

import pytest
import torch
from mugv_infer_fixtures import TEXT_DIM
from test_quantize import reference_fp8_linear

pytestmark = pytest.mark.gpu
fp8_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
    reason="needs a CUDA GPU with float8 (sm >= 8.9)",
)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _linear(k=256, n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) * 0.05)
        lin.bias.copy_(torch.randn(n, generator=g))
    x = torch.randn(64, k, generator=g) * 2
    return lin, x


@fp8_gpu
def test_scaled_mm_fp8_linear_matches_float64_reference():
    from mugv_infer.quantize import Fp8Linear

    lin, x = _linear()
    ref = reference_fp8_linear(x, lin.weight, lin.bias)
    lin16 = lin.to("cuda", torch.bfloat16)
    x16 = x.to("cuda", torch.bfloat16)
    ref16 = reference_fp8_linear(
        x16.float().cpu(), lin16.weight.float().cpu(), lin16.bias.float().cpu()
    )
    q = Fp8Linear.from_linear(lin16, "scaled_mm")
    y = q(x16)
    assert y.dtype == torch.bfloat16
    # bf16 output rounding (2**-9) and fast accumulation only
    assert _rel(y.float().cpu(), ref16) < 6e-3
    assert _rel(y.float().cpu(), ref) < 0.08


@fp8_gpu
def test_torchao_fp8_linear_matches_scaled_mm():
    from mugv_infer.quantize import Fp8Linear, fp8_linear, torchao_available

    if not torchao_available():
        pytest.skip("torchao does not import here")
    lin, x = _linear(seed=1)
    lin = lin.to("cuda", torch.bfloat16)
    x = x.to("cuda", torch.bfloat16)
    ours = Fp8Linear.from_linear(lin, "scaled_mm")(x)
    ao = fp8_linear(lin, "torchao")(x)
    assert _rel(ao.float(), ours.float()) < 1e-2


@fp8_gpu
@pytest.mark.parametrize("backend", ["scaled_mm", "auto"])
def test_quantized_dit_on_cuda_close_to_bf16(backend):
    from mugv_infer.models import MUGDiTTransformer3DModel
    from mugv_infer.quantize import load_time_probes, quantize_fp8

    model = MUGDiTTransformer3DModel(
        hidden_size=144, num_layers=2, num_heads=2, in_channels=24, text_dim=TEXT_DIM
    ).initialize_weights(0)
    model = torch.nn.Module.to(model, "cuda", torch.bfloat16).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 24, 3, 8, 12, generator=g).to("cuda", torch.bfloat16)
    text = torch.randn(2, 7, TEXT_DIM, generator=g).to("cuda", torch.bfloat16)
    s = torch.tensor([0.9, 0.3], device="cuda")
    with torch.no_grad():
        ref = model(x, s, text).sample
        report = quantize_fp8(model, backend=backend, probes=load_time_probes(model, "cuda"))
        out = model(x, s, text).sample
    assert report.backend in ("scaled_mm", "torchao") and not report.kept
    assert 1e-4 < _rel(out, ref) < 0.1


@cuda
def test_cuda_graphed_blocks_match_eager_with_the_step_cache():
    from mugv_infer.graphed import apply_graphed_blocks
    from mugv_infer.models import MUGDiTTransformer3DModel
    from mugv_infer.step_cache import StepCache

    model = MUGDiTTransformer3DModel(
        hidden_size=144, num_layers=2, num_heads=2, in_channels=24, text_dim=TEXT_DIM
    ).initialize_weights(0)
    model = torch.nn.Module.to(model, "cuda").eval()
    g = torch.Generator().manual_seed(0)
    x0, x2 = (torch.randn(2, 24, 3, 8, 12, generator=g).cuda() for _ in range(2))
    # step 2 barely moves (the cache serves it), step 3 moves far (computed again)
    steps = [(x0, 0.9), (x0 * 1.001, 0.88), (x2, 0.5)]
    steps = [(x, torch.tensor([sig, sig]).cuda()) for x, sig in steps]
    text = torch.randn(2, 7, TEXT_DIM, generator=g).cuda()

    def run():
        model.step_cache = StepCache(0.05)
        outs = [model(x, s, text).sample.clone() for x, s in steps]
        skipped = model.step_cache.skipped
        model.step_cache = None
        return outs, skipped

    with torch.no_grad():
        eager, skipped = run()
        runner = apply_graphed_blocks(model)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a failed capture would warn
            graphed, skipped_g = run()
    assert runner.failed is None
    assert skipped == skipped_g == 1 and runner.replays == 2
    for e, o in zip(eager, graphed):
        assert _rel(o, e) < 1e-5


@cuda
def test_fa4_padded_to_80_equals_unpadded_on_the_gpu():
    """The 72-wide heads through FA4 at 80 (``auto``) against FA4 at 72 (``0``) and against
    the float64 SDPA of the same bf16 inputs: same numbers to bf16 rounding."""
    from mugv_infer.models import transformer as tr
    from mugv_kernels.attention import fa4_functions, resolve_backend

    if fa4_functions() is None:
        pytest.skip("FlashAttention-4 (flash_attn.cute) not installed")
    probe = torch.zeros(1, 1, 1, 72, device="cuda", dtype=torch.bfloat16)
    if resolve_backend("auto", probe, path="dense", needs_backward=False) != "fa4":
        pytest.skip("auto does not take FA4 here (not Hopper, or its self-check failed)")
    from mugv_kernels.rope import dit_rope_tables

    torch.manual_seed(0)
    sa = tr.SelfAttention(hidden=144, heads=2, eps=1e-6).cuda()
    with torch.no_grad():
        sa.q_norm_weight.uniform_(0.5, 2.0)
    sa = sa.to(torch.bfloat16)
    n = 2 + 4 * 16 * 16
    x = (torch.randn(2, n, 144, device="cuda") * 3).to(torch.bfloat16)
    cos, sin = dit_rope_tables((4, 16, 16), 72, torch.arange(6)[None].expand(2, 6), device="cuda")
    outs = {}
    with torch.no_grad():
        for width in (80, 72):
            sa.pad_head_dim = width
            outs[width] = sa(x, cos, sin, n, fused=True).float()
        sa.backend = "sdpa"
        ref = sa.double()(x.double(), cos.double(), sin.double(), n).float()
    assert _rel(outs[80], outs[72]) < 1e-2
    assert _rel(outs[80], ref) < 1e-2 and _rel(outs[72], ref) < 1e-2


@cuda
def test_weight_only_fp8_linear_on_the_gpu():
    from mugv_infer.quantize import Fp8Linear

    lin, x = _linear()
    lin16 = lin.to("cuda", torch.bfloat16)
    q = Fp8Linear.from_linear(lin16, "emulated", weight_only=True)
    w = q.dequantized_weight(torch.float64).cpu()
    ref = x.to(torch.bfloat16).double() @ w.t() + lin16.bias.double().cpu()
    y = q(x.to("cuda", torch.bfloat16))
    assert y.dtype == torch.bfloat16 and _rel(y.float().cpu(), ref) < 6e-3
