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
