"""Trainer smoke run on a GPU: demo config in bf16 on CUDA with async torch_dist checkpoints,
then export. Prints the metrics; exits non-zero on failure.

    python gpu_trainer_smoke.py WORKDIR
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    work = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/dit-smoke")
    sys.path.insert(0, str(HERE.parent / "tests"))
    from mugv_dit.cli import main as cli
    from mugv_dit_fixtures import make_latent_dataset

    make_latent_dataset(work / "latents")
    rc = cli(
        [
            "train",
            str(HERE.parent / "configs" / "demo.yaml"),
            "--set",
            f"data.path={work / 'latents'}",
            "--set",
            f"output_dir={work / 'run'}",
            "--set",
            "train.progress=false",
            "--set",
            "train.async_save=true",
            "--set",
            "train.save_every=3",
        ]
    )
    print("train rc", rc)
    print((work / "run" / "metrics.jsonl").read_text())
    print("checkpoints", sorted(p.name for p in (work / "run" / "checkpoints").iterdir()))
    rc2 = cli(["export", "--run", str(work / "run"), "--output", str(work / "export")])
    print("export rc", rc2)
    return rc or rc2


if __name__ == "__main__":
    sys.exit(main())
