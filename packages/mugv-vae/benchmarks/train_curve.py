"""Short real training run of the mugv-preset VAE on pre-decoded sample clips (GPU).

Trains from random initialisation (no SDXL weights are available offline) with bf16
autocast, logs training metrics and the EMA model's PSNR on held-out clips every
``--eval-every`` steps into ``<out>/metrics.jsonl``, stopping after ``--max-seconds``.

    python packages/mugv-vae/benchmarks/train_curve.py --train DIR --eval DIR --out RUN
"""

from __future__ import annotations

import argparse
import json

from mugv_vae.train.config import TrainConfig
from mugv_vae.train.trainer import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--train", required=True, help="folder of clips (.npy uint8 or videos)")
    ap.add_argument("--eval", required=True, help="folder of held-out clips")
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="mugv")
    ap.add_argument("--resolution", default="128x128")
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--max-seconds", type=float, default=150)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--lr", type=float, default=2e-4)
    args = ap.parse_args()
    cfg = TrainConfig.model_validate(
        {
            "output": args.out,
            "model": {"preset": args.preset},
            "data": {
                "clips": args.train,
                "eval_clips": args.eval,
                "resolution": args.resolution,
                "frames": args.frames,
                "batch_size": args.batch_size,
                "image_ratio": 0.1,
                "num_workers": 4,
            },
            "loss": {"perceptual": 0.0},
            "optim": {"lr": args.lr, "warmup_steps": 20},
            "steps": args.steps,
            "ema_decay": 0.98,
            "log_every": 5,
            "image_every": 0,
            "eval_every": args.eval_every,
            "checkpoint_every": 10**9,
            "save_final": False,
            "max_seconds": args.max_seconds,
        }
    )
    trainer = Trainer(cfg)
    result = trainer.run()
    final = trainer.evaluate()
    if final:
        trainer.step = result["steps"]
        trainer._log(final)
    print(json.dumps({**result, "final_eval": final}))


if __name__ == "__main__":
    main()
