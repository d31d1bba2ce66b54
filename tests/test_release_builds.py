"""Every package builds alone (no workspace sources) and its wheel installs and imports in a
fresh virtual environment with only its declared dependencies (scripts/release_check.py).

Marked ``slow`` (builds the seven stage wheels and the umbrella `mugv`, installs each into its own venv): excluded from the
default ``uv run pytest``; CI (`.ci/run`) runs it after the fast suite."""

from __future__ import annotations

from pathlib import Path

import pytest
import release_check

pytestmark = pytest.mark.slow


def test_every_package_builds_and_installs_alone(tmp_path: Path) -> None:
    results = release_check.check(release_check.ALL, tmp_path / "dist")
    assert [name for name, _ in results] == release_check.ALL
    wheels = sorted(p.name for p in (tmp_path / "dist").glob("*.whl"))
    assert len(wheels) == len(release_check.ALL)
