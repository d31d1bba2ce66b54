"""Channels-last GroupNorm + SiLU with ``in_bias`` / ``inplace`` and ``bias_residual``: the
Triton kernels under the CPU interpreter (tiny shapes, several statistics programs, padded
channel tiles) against float64 torch, gradients included; argument checks and the PyTorch
fallbacks in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mugv_kernels import bias_residual, group_norm_silu


@pytest.fixture(scope="module")
def interpreter_errors() -> dict[str, float]:
    pytest.importorskip("triton")
    script = Path(__file__).with_name("_cl_interpret.py")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["gn in_bias", "gn inplace", "gn noaffine", "res", "gn grad"])
def test_kernels_match_float64_under_the_interpreter(interpreter_errors, kind):
    errs = {k: v for k, v in interpreter_errors.items() if k.startswith(kind)}
    assert len(errs) >= 5, sorted(interpreter_errors)
    bad = {k: v for k, v in errs.items() if not v < 2e-5}
    assert not bad, bad


def test_fallback_folds_in_bias_and_keeps_autograd(gen):
    x = torch.randn(2, 8, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    ib = torch.randn(8, generator=gen, dtype=torch.float64, requires_grad=True)
    w, b = torch.randn(8, generator=gen, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    out = group_norm_silu(x, 4, w, b, eps=1e-5, in_bias=ib, use_triton=False)
    ref = F.silu(F.group_norm(x + ib.view(1, -1, 1, 1), 4, w, b, 1e-5))
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert ib.grad is not None and ib.grad.abs().sum() > 0


def test_bias_residual_fallback_matches_float64(gen):
    x = torch.randn(2, 8, 3, 4, 5, generator=gen).contiguous(memory_format=torch.channels_last_3d)
    r, bias = torch.randn_like(x), torch.randn(8, generator=gen)
    ref = x.double() + bias.double().view(1, -1, 1, 1, 1) + r.double()
    torch.testing.assert_close(bias_residual(x, bias, r, use_triton=False).double(), ref)
    torch.testing.assert_close(bias_residual(x, None, r, use_triton=False), x + r)
    y = x.clone()
    assert bias_residual(y, bias, r, inplace=True, use_triton=False) is y
    torch.testing.assert_close(y.double(), ref, rtol=1e-6, atol=1e-6)


def test_bad_arguments_name_the_field():
    x = torch.randn(2, 8, 4, 4)
    with pytest.raises(ValueError, match="in_bias"):
        group_norm_silu(x, 4, None, None, in_bias=torch.zeros(3), use_triton=False)
    with pytest.raises(ValueError, match="inplace"):
        group_norm_silu(x.requires_grad_(), 4, None, None, inplace=True, use_triton=False)
    with pytest.raises(ValueError, match="residual"):
        bias_residual(torch.randn(2, 8, 4, 4), None, torch.randn(2, 8, 4, 3))
    with pytest.raises(ValueError, match="bias"):
        bias_residual(torch.randn(2, 8, 4, 4), torch.zeros(4), torch.randn(2, 8, 4, 4))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channels_last_inference_on_gpu(dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2, 256, 45, 80, device="cuda", generator=g) * 2 + 3
    x = x.to(dtype).contiguous(memory_format=torch.channels_last)
    w, b, ib = (torch.randn(256, device="cuda", generator=g) for _ in range(3))
    with torch.no_grad():
        out = group_norm_silu(x, 32, w, b, in_bias=ib)
        ref = F.silu(
            F.group_norm(
                x.double() + ib.double().view(1, -1, 1, 1), 32, w.double(), b.double(), 1e-6
            )
        )
        assert out.is_contiguous(memory_format=torch.channels_last)
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
        torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
        r = torch.randn_like(x)
        ref = x.double() + ib.double().view(1, -1, 1, 1) + r.double()
        out = bias_residual(x.clone(memory_format=torch.channels_last), ib, r, inplace=True)
        torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
