"""Shared fixtures of the mugv-infer tests (helpers in mugv_infer_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from mugv_infer_fixtures import FRAMES, HEIGHT, WIDTH, tiny_parts


@pytest.fixture(scope="session")
def parts(tmp_path_factory) -> dict[str, Path]:
    """Folders: ``model`` (mugv.dit-export), ``vae`` (mugv.vae-checkpoint), ``t5``."""
    return tiny_parts(tmp_path_factory.mktemp("parts"))


@pytest.fixture
def pipe(parts):
    from mugv_infer import MUGVPipeline

    p = MUGVPipeline.from_parts(parts["model"], parts["vae"], parts["t5"])
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture
def call_kwargs():
    return dict(
        height=HEIGHT,
        width=WIDTH,
        num_frames=FRAMES,
        num_inference_steps=2,
        guidance_scale=4.0,
        output_type="np",
    )
