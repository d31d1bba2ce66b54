"""Shared helpers of the mugv-kernels tests."""

from __future__ import annotations

import pytest
import torch

#: The tests' own bounds on ``||triton - float64|| / ||float64||`` (output, each input's
#: gradient), set here and not read from the code under test (``selfcheck.TOLERANCE``).
#: float32: ~100 ulps of fp32 accumulation over the tiny shapes (seen: <= 7e-6).
#: bfloat16: ~2.5 units of bf16 rounding (2**-8) for the rounded result (seen: <= 4e-3).
INTERPRETER_BOUNDS = {"float32": (2e-5, 2e-5), "bfloat16": (1e-2, 1e-2)}
#: GPU (medium shapes): gradients reduced across programs in fp32 atomics, in another order.
GPU_BOUNDS = {"float32": (2e-5, 1e-4), "bfloat16": (1e-2, 2e-2)}


def check_parity(name: str, out_err: float, grad_err: dict[str, float], bounds: dict) -> None:
    """Assert one parity result (case ``name`` ends with its dtype) is within ``bounds``."""
    out_bound, grad_bound = bounds[name.rsplit(" ", 1)[-1]]
    assert grad_err, f"{name}: no gradient was compared"
    assert out_err <= out_bound, f"{name}: output rel. error {out_err:.2e} > {out_bound:.0e}"
    for arg, err in grad_err.items():
        assert err <= grad_bound, f"{name}: d{arg} rel. error {err:.2e} > {grad_bound:.0e}"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` in float64."""
    a64, b64 = a.detach().double(), b.detach().double()
    return float((a64 - b64).norm() / b64.norm().clamp_min(1e-300))


@pytest.fixture
def gen() -> torch.Generator:
    """A fresh seeded generator per test."""
    return torch.Generator().manual_seed(1234)
