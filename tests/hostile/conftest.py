import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # hostile_util

_DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _restore_rendezvous_env():
    """init_distributed (here and inside the trainer) sets rendezvous variables; remove them
    after each test so later tests' subprocesses (the demo) do not join this process."""
    before = {k: os.environ.get(k) for k in _DIST_VARS}
    yield
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def megatron_single():
    """One local Megatron process group (TP=1, DP=1, gloo)."""
    from mugv_dit.parallel import init_distributed

    init_distributed(1, backend="gloo")
