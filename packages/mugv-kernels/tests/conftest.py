"""Shared helpers of the mugv-kernels tests."""

from __future__ import annotations

import pytest
import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` in float64."""
    a64, b64 = a.detach().double(), b.detach().double()
    return float((a64 - b64).norm() / b64.norm().clamp_min(1e-300))


@pytest.fixture
def gen() -> torch.Generator:
    """A fresh seeded generator per test."""
    return torch.Generator().manual_seed(1234)
