"""Shared fixtures of the mugv-infer tests (helpers in mugv_infer_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from mugv_infer_fixtures import FRAMES, HEIGHT, WIDTH, _tiny_t5, tiny_transformer


@pytest.fixture(scope="session")
def parts(tmp_path_factory) -> dict[str, Path]:
    """Folders: ``model`` (mugv.dit-export), ``vae`` (mugv.vae-checkpoint), ``t5``."""
    from mugv_vae.config import tiny_config
    from mugv_vae.model import MUGVAE

    root = tmp_path_factory.mktemp("parts")
    tiny_transformer().save_export(root / "model")
    torch.manual_seed(0)
    MUGVAE(tiny_config()).eval().save_pretrained(root / "vae")
    return {"model": root / "model", "vae": root / "vae", "t5": _tiny_t5(root / "text")}


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
