"""The mugv-kernels command line."""

from __future__ import annotations

import pytest
from mugv_kernels.cli import main


def test_info_reports_the_dispatch(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "mugv-kernels" in out and "torch" in out
    assert "PyTorch reference" in out or "Triton" in out


def test_check_on_cpu_refuses_without_interpreter(monkeypatch, capsys):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert main(["check", "--device", "cpu"]) == 2
    assert "TRITON_INTERPRET=1" in capsys.readouterr().err


def test_unknown_size_is_refused():
    with pytest.raises(SystemExit):
        main(["check", "--size", "huge"])


def test_package_works_without_triton():
    """Where triton cannot be installed (macOS, Windows) the references still run."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, mugv_kernels as mk\n"
        "assert not mk.triton_available()\n"
        "x = torch.randn(2, 3, 8)\n"
        "y = mk.group_norm_silu(torch.randn(2, 4, 5), 2, None, None)\n"
        "out = mk.modulated_layer_norm(x, torch.randn(2, 8), torch.randn(2, 8))\n"
        "try:\n"
        "    mk.modulated_layer_norm(x, torch.randn(2, 8), torch.randn(2, 8), use_triton=True)\n"
        "except ValueError as err:\n"
        "    assert 'not installed' in str(err)\n"
        "else:\n"
        "    raise SystemExit('use_triton=True without triton must fail')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
