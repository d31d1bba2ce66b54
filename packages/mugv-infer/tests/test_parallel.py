"""Sequence-parallel (Ulysses) and CFG-parallel generation on CPU over gloo with 2 processes,
and both combined with 4 (SP=2 x CFG=2), give the single-process output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).parent / "mugv_infer_parallel_worker.py"


@pytest.fixture(scope="module")
def single(parts):
    sys.path.insert(0, str(WORKER.parent))
    from mugv_infer import MUGVPipeline
    from mugv_infer_parallel_worker import run

    pipe = MUGVPipeline.from_parts(parts["model"], parts["vae"], parts["t5"])
    pipe.set_progress_bar_config(disable=True)
    return run(pipe)


def _torchrun(parts, sp, cfg, out: Path) -> dict:
    n = sp * cfg
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n),
        "--master_port", "0", "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0",
        str(WORKER), str(parts["model"]), str(parts["vae"]), str(parts["t5"]), str(sp), str(cfg), str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out)


@pytest.mark.parametrize(
    ("sp", "cfg"), [(2, 1), (1, 2), (2, 2)], ids=["ulysses2", "cfg2", "ulysses2xcfg2"]
)
def test_parallel_matches_single_process(parts, single, sp, cfg, tmp_path):
    got = _torchrun(parts, sp, cfg, tmp_path / "out.pt")
    torch.testing.assert_close(got["latents"], single["latents"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["video"], single["video"], rtol=1e-5, atol=1e-5)


def test_sequence_parallel_needs_divisible_heads_and_a_launcher():
    from mugv_infer.parallel import init_parallel

    assert init_parallel(1, 1).world == 1
    with pytest.raises(ValueError, match="cfg parallel size"):
        init_parallel(1, 3)
