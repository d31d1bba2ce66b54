"""Triton kernels under the CPU interpreter (tiny shapes) against float64 references.

The interpreter must be switched on before triton first decorates a kernel, so the kernels run
in a subprocess: ``mugv-kernels check --size tiny`` with ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from mugv_kernels.selfcheck import cases

from .conftest import INTERPRETER_BOUNDS, check_parity

pytest.importorskip("triton")

DTYPES = ("float32", "bfloat16")
NAMES = [c.name for c in cases("tiny", (torch.float32, torch.bfloat16))]


@pytest.fixture(scope="module")
def interpreter_results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("interp") / "results.json"
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "mugv_kernels.cli", "check", "--size", "tiny", "--device", "cpu"]
    proc = subprocess.run(
        [*cmd, "--dtype", *DTYPES, "--json", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if not out.exists():
        pytest.fail(f"interpreter run wrote no results:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(out.read_text())["results"]


def test_every_case_ran(interpreter_results):
    assert sorted(interpreter_results) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_triton_interpreter_matches_float64_reference(interpreter_results, name):
    res = interpreter_results[name]
    check_parity(name, res["out_err"], res["grad_err"], INTERPRETER_BOUNDS)


def test_parity_check_rejects_errors_past_the_test_bounds():
    """The bound check itself: a NaN, a too-large output or gradient error, or no gradient fail."""
    good = {"x": 1e-6}
    check_parity("case float32", 1e-6, good, INTERPRETER_BOUNDS)
    for out_err, grad_err in ((3e-5, good), (1e-6, {"x": 3e-5}), (float("nan"), good), (0, {})):
        with pytest.raises(AssertionError):
            check_parity("case float32", out_err, grad_err, INTERPRETER_BOUNDS)
