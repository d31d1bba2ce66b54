"""Golden losses: a seeded tiny pre-training run on CPU (fp32: three curriculum stages, two
micro-batches per step, EMA), its per-step loss and grad norm, compared by test_golden.py
against ``golden/losses.json``.

Regenerate the file (after a deliberate change of the numerics, say why in the commit):

    uv run python packages/mugv-dit/tests/mugv_dit_golden.py --write

Everything is seeded: the latent shards and texts (numpy), the initial weights (train.seed),
the noise / timesteps / tasks of each micro-batch and the step plan (data.seed).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from mugv_dit_fixtures import make_latent_dataset

GOLDEN = Path(__file__).parent / "golden" / "losses.json"
KEYS = ("loss", "grad_norm", "lr")
CURRICULUM = [
    {"name": "images", "steps": 2, "lr": 1e-3, "image_share_start": 1.0, "image_share_end": 0.5},
    {"name": "short", "steps": 2, "lr": 1e-3, "max_frames": 17, "lr_decay": "cosine"},
    {
        "name": "long",
        "steps": 2,
        "lr": 5e-4,
        "min_frames": 17,
        "task_ratios": {"i2v": 1.0, "continuation": 1.0},
    },
]


def golden_losses(workdir: Path) -> list[dict]:
    """Per-step values of ``KEYS`` of the run, from scratch in ``workdir``. Needs Megatron's
    single-process state (initialised here when absent)."""
    from megatron.core import parallel_state
    from mugv_dit.config import load_config
    from mugv_dit.parallel import init_distributed
    from mugv_dit.trainer import Trainer

    if not parallel_state.model_parallel_is_initialized():
        init_distributed(1, backend="gloo")
    raw = {
        "preset": "debug",
        "model": {"text_dim": 32},
        "objective": {"task_ratios": {"t2v": 1.0, "i2v": 1.0}, "caption_dropout": 0.3},
        "data": {
            "path": str(make_latent_dataset(workdir / "latents")),
            "tokens_per_batch": 64,
            "seed": 1231,
        },
        "train": {"progress": False, "ema_decay": 0.9, "tensorboard": False, "seed": 5},
        "curriculum": CURRICULUM,
        "output_dir": str(workdir / "run"),
    }
    (workdir / "run.yaml").write_text(yaml.safe_dump(raw))
    trainer = Trainer(load_config(workdir / "run.yaml"), micro_batches_per_step=2)
    try:
        logs = trainer.run()
    finally:
        trainer.close()
    return [{k: log[k] for k in KEYS} for log in logs]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true", help=f"write {GOLDEN}")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    with tempfile.TemporaryDirectory() as tmp:
        steps = golden_losses(Path(tmp))
    doc = {
        "generated_by": "uv run python packages/mugv-dit/tests/mugv_dit_golden.py --write",
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
