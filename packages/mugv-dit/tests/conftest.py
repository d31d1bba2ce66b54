"""Shared fixtures of the mugv-dit tests."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

# test helper modules (uniquely named mugv_dit_*) live beside this file
sys.path.insert(0, str(Path(__file__).parent))
warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex.*")


@pytest.fixture(scope="session")
def megatron_single():
    """Megatron parallel_state for one process (TP=1, DP=1, gloo)."""
    from mugv_dit.parallel import init_distributed

    init_distributed(1, backend="gloo")
    yield
    # left initialised for the whole session: destroying and re-creating gloo groups is slow


@pytest.fixture
def debug_cfg():
    from mugv_dit.config import model_preset

    return model_preset("debug")


@pytest.fixture
def debug_model(megatron_single, debug_cfg):
    from mugv_dit import build_model

    torch.manual_seed(0)
    return build_model(debug_cfg).eval()
