"""Lighter installs: megatron-energon is the optional ``energon`` extra of mugv-dit."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest


def test_energon_loader_without_energon_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "megatron.energon", None)
    monkeypatch.delitem(sys.modules, "mugv_dit.data.energon", raising=False)
    with pytest.raises(ModuleNotFoundError, match=r"install mugv-dit\[energon\]"):
        importlib.import_module("mugv_dit.data.energon")


def test_plan_loader_and_cli_import_without_energon():
    """Only ``data.loader: energon`` needs the extra: the trainer, the ``plan`` loader and the
    CLI import with megatron.energon blocked (a fresh interpreter)."""
    code = (
        "import sys; sys.modules['megatron.energon'] = None\n"
        "import mugv_dit.cli, mugv_dit.data.plan, mugv_dit.trainer, mugv_dit.text\n"
        "assert 'megatron.energon' not in [m for m, v in sys.modules.items() if v is not None]\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]


def test_tensorboard_missing_names_the_extra_and_the_switch(monkeypatch):
    from mugv_dit.trainer import tensorboard_writer_class

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError) as e:
        tensorboard_writer_class()
    assert "install mugv-dit[train]" in str(e.value)
    assert "train.tensorboard=false" in str(e.value)


def test_trainer_and_cli_import_without_tensorboard():
    """tensorboard is the ``train`` extra: the trainer, export and the CLI import with it
    blocked (a fresh interpreter), and nothing imports it on the way."""
    code = (
        "import sys; sys.modules['tensorboard'] = None\n"
        "sys.modules['torch.utils.tensorboard'] = None\n"
        "import mugv_dit.cli, mugv_dit.trainer, mugv_dit.interop.export\n"
        "from mugv_dit.config import TrainConfig\n"
        "assert TrainConfig().tensorboard is True\n"
        "loaded = [m for m, v in sys.modules.items() if v is not None]\n"
        "assert not [m for m in loaded if 'tensorboard' in m], loaded\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
