"""Tiny latent-shard datasets for the mugv-dit tests (written with mugv_formats)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
from mugv_formats import LatentRecord, LatentShardWriter

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """The benchmark script ``benchmarks/NAME.py`` imported as a module (the scripts are not a
    package), for tests of its pure functions."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# (latent T, H, W, pixel frames, pixel height, pixel width, count)
DEFAULT_LAYOUT = [
    (1, 4, 4, 1, 32, 32, 4),  # images
    (3, 4, 4, 17, 32, 32, 6),  # short clips
    (3, 4, 6, 17, 32, 48, 4),  # another aspect ratio
    (5, 4, 4, 33, 32, 32, 4),  # longer clips
    (3, 6, 6, 17, 48, 48, 4),  # odd token count (29 with start/end): sequence-parallel padding
]


def make_latent_dataset(
    path: Path,
    *,
    text_dim: int | None = 32,
    channels: int = 24,
    layout=DEFAULT_LAYOUT,
    seed: int = 0,
    with_text: bool = True,
    energon: bool = False,
    weights: list[float] | None = None,
) -> Path:
    """A latent dataset of ``layout``; ``weights[n]`` is sample n's ``sample_weight``
    (default 1.0 each)."""
    rng = np.random.default_rng(seed)
    header = LatentShardWriter.make_header(
        producer="mugv-dit-tests 0",
        vae_checkpoint_id="test-vae",
        latent_channels=channels,
        latent_mean=[0.0] * channels,
        latent_std=[1.0] * channels,
        text_encoder_id="test-t5" if with_text else None,
        text_dim=text_dim if with_text else None,
        max_text_len=16,
    )
    n = 0
    with LatentShardWriter(path, header, samples_per_shard=5, energon=energon) as writer:
        for t, h, w, frames, ph, pw, count in layout:
            for _ in range(count):
                lat = rng.standard_normal((channels, t, h, w)).astype(np.float32)
                text = None
                if with_text:
                    text = rng.standard_normal((int(rng.integers(2, 9)), text_dim)).astype(
                        np.float32
                    )
                rec = LatentRecord(
                    key=f"s{n:04d}",
                    caption=f"sample {n}",
                    fps=24.0,
                    num_frames=frames,
                    height=ph,
                    width=pw,
                    sample_weight=1.0 if weights is None else weights[n],
                )
                writer.write(rec, lat, text)
                n += 1
    return path
