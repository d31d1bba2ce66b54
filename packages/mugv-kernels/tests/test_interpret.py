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
    assert res["ok"], res
    assert res["grad_err"], "no gradient was compared"
