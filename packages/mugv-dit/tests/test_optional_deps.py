"""Lighter installs: megatron-energon is the optional ``energon`` extra of mugv-dit."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest


def test_energon_loader_without_energon_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "megatron.energon", None)
    monkeypatch.delitem(sys.modules, "mugv_dit.data_energon", raising=False)
    with pytest.raises(ModuleNotFoundError, match=r"install mugv-dit\[energon\]"):
        importlib.import_module("mugv_dit.data_energon")


def test_plan_loader_and_cli_import_without_energon():
    """Only ``data.loader: energon`` needs the extra: the trainer, the ``plan`` loader and the
    CLI import with megatron.energon blocked (a fresh interpreter)."""
    code = (
        "import sys; sys.modules['megatron.energon'] = None\n"
        "import mugv_dit.cli, mugv_dit.data, mugv_dit.trainer, mugv_dit.text\n"
        "assert 'megatron.energon' not in [m for m, v in sys.modules.items() if v is not None]\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
