"""Shared fixtures of the mugv-align tests."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # helper modules named mugv_align_*
warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex.*")


@pytest.fixture(scope="session")
def megatron_single():
    """Megatron parallel_state for one process (TP=1, DP=1, gloo), kept for the session."""
    from mugv_dit.parallel import init_distributed

    init_distributed(1, backend="gloo")
    yield
