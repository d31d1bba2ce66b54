"""Triton kernels on a CUDA GPU against float64 references (medium, odd shapes)."""

from __future__ import annotations

import mugv_kernels as mk
import pytest
import torch
from mugv_kernels.selfcheck import cases, run_case

from .conftest import GPU_BOUNDS, check_parity

pytestmark = pytest.mark.gpu

CASES = cases("medium", (torch.float32, torch.bfloat16))


@pytest.fixture(autouse=True)
def _need_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_triton_matches_float64_reference_on_gpu(case):
    res = run_case(case, "cuda")
    check_parity(case.name, res.out_err, res.grad_err, GPU_BOUNDS)


@pytest.mark.parametrize("seed", [1, 2])
def test_results_are_deterministic_and_default_to_triton(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 1000, 1728, generator=gen).cuda().bfloat16()
    shift, scale = (torch.randn(2, 2, 1728, generator=gen).cuda() for _ in range(2))
    mask = (torch.rand(2, 1000, generator=gen) < 0.3).cuda()
    a = mk.modulated_layer_norm(x, shift, scale, token_branch=mask)
    b = mk.modulated_layer_norm(x, shift, scale, token_branch=mask, use_triton=True)
    assert torch.equal(a, b)
    xr = x.detach().requires_grad_()
    sr = scale.detach().requires_grad_()
    grads = []
    for _ in range(2):
        out = mk.modulated_layer_norm(xr, shift, sr, token_branch=mask)
        grads.append(torch.autograd.grad(out.float().square().sum(), (xr, sr)))
    assert all(torch.equal(g0, g1) for g0, g1 in zip(*grads))


def test_triton_path_runs_inside_torch_compile():
    """The Triton ops are compile-safe: they run as graph-break eager calls."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 300, 1152, generator=gen).cuda().requires_grad_()
    shift, scale = (torch.randn(2, 1152, generator=gen).cuda() for _ in range(2))

    def block(x):
        h, hn = mk.gated_residual_modulated_norm(x, x, shift, shift, scale)
        return mk.modulated_layer_norm(hn * 2, shift, scale) + h

    out = torch.compile(block)(x)
    ref_out = block(x)
    assert torch.allclose(out, ref_out, atol=1e-4, rtol=1e-4)
    (g,) = torch.autograd.grad(out.sum(), x)
    (g_ref,) = torch.autograd.grad(ref_out.sum(), x)
    assert torch.allclose(g, g_ref, atol=1e-3, rtol=1e-3)


def test_qk_backward_with_only_k_needing_gradients():
    """Only k's output is used: the kernel skips q (DO_Q=False) and must still match."""
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(2, 120, 6, 72, generator=gen).cuda().bfloat16()
    k = torch.randn(2, 120, 3, 72, generator=gen).cuda().bfloat16().requires_grad_()
    qw = torch.randn(72, generator=gen).cuda().bfloat16()
    kw = (torch.randn(72, generator=gen) * 0.1 + 1).cuda().bfloat16().requires_grad_()
    cos, sin = mk.rope3d_frequencies((2, 6, 10), 72, device="cuda")
    dout = torch.randn(2, 120, 3, 72, generator=gen).cuda().bfloat16()
    grads = {}
    for use_triton in (True, False):
        _, k_out = mk.qk_rmsnorm_rope3d(q, k, qw, kw, cos, sin, use_triton=use_triton)
        grads[use_triton] = torch.autograd.grad(k_out, (k, kw), dout)
    for g, r in zip(grads[True], grads[False]):
        err = ((g.double() - r.double()).norm() / r.double().norm()).item()
        assert err < 2e-2, err
