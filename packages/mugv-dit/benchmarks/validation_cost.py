"""Cost of mugv-dit's held-out validation (issue 25): one pass over the held-out set and its
share of training time at ``validation.every_steps``.

Everything goes through the real ``Trainer``: a synthetic latent set of ``--samples`` clips
at one latent grid (default 14 x 46 x 80 = 12.9k tokens after the 1x2x2 patch, ~360p 5 s)
serves as both the training and the held-out set; the model is the 2b width at
``--layers`` layers (1728 x 8 by default, head dim 72, T5-XXL text width). It times
``--iters`` training steps of ``--micro-batches`` micro-batches (one 12.9k-token sample each,
the data.tokens_per_batch budget) after ``--warmup`` steps, then ``Trainer.validate()``
(``--samples`` x ``--noise-levels`` forward passes in eval mode, data loading included)
twice, the second one timed. Prints a table and writes JSON (+ markdown with ``--markdown``).

    share = T_val / (every_steps * T_step + T_val)

One GPU (the issue's figure; validation splits over DP ranks as training does, so on N GPUs
of the same per-GPU batch the share is N times smaller):

    python packages/mugv-dit/benchmarks/validation_cost.py --json out.json --markdown out.md

CPU smoke run of the same code at toy sizes (seconds):

    python packages/mugv-dit/benchmarks/validation_cost.py --tiny --json /tmp/v.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_heldout_set(path: Path, *, samples: int, grid, channels: int, text_dim: int,
                     text_len: int, patch_px: int = 8) -> Path:  # fmt: skip
    """``samples`` random latent clips of one latent ``grid`` (T, H, W) with text features."""
    from mugv_formats import LatentRecord, LatentShardWriter

    t, h, w = grid
    rng = np.random.default_rng(0)
    header = LatentShardWriter.make_header(
        producer="mugv-dit validation_cost benchmark",
        vae_checkpoint_id="bench-vae",
        latent_channels=channels,
        latent_mean=[0.0] * channels,
        latent_std=[1.0] * channels,
        text_encoder_id="bench-t5",
        text_dim=text_dim,
        max_text_len=text_len,
    )
    with LatentShardWriter(path, header, samples_per_shard=16) as writer:
        for n in range(samples):
            rec = LatentRecord(
                key=f"v{n:05d}",
                caption=f"held-out clip {n}",
                fps=24.0,
                num_frames=1 + 8 * (t - 1),  # the 8x8x8 VAE: 1 + 8 (T - 1) frames
                height=h * patch_px,
                width=w * patch_px,
            )
            lat = rng.standard_normal((channels, t, h, w), dtype=np.float32)
            text = rng.standard_normal((text_len, text_dim), dtype=np.float32)
            writer.write(rec, lat, text)
    return path


def run_config(args, data: Path, out: Path) -> dict:
    """The run's config: one stage long enough never to end, validation never due inside
    ``run`` (the benchmark calls ``validate`` itself)."""
    t, h, w = args.grid
    tokens = t * (h // 2) * (w // 2)
    return {
        "model": {
            "hidden_size": args.hidden,
            "num_layers": args.layers,
            "num_heads": args.hidden // args.head_dim,
            "text_dim": args.text_dim,
        },
        "runtime": {"attention_backend": args.attention, "fused_ops": args.fused_ops},
        "objective": {"task_ratios": {"t2v": 0.6, "i2v": 0.2, "continuation": 0.2}},
        "data": {"path": str(data), "tokens_per_batch": tokens, "max_batch_size": 1},
        "train": {"progress": False, "tensorboard": False, "save_every": 0},
        "curriculum": [{"name": "bench", "steps": 10**6, "lr": 1e-5}],
        "validation": {
            "path": str(data),
            "every_steps": 10**6,
            "max_samples": args.samples,
            "noise_levels": args.noise_levels,
        },
        "output_dir": str(out),
    }


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(args) -> dict:
    from mugv_dit.config import RunConfig
    from mugv_dit.trainer import Trainer

    with tempfile.TemporaryDirectory(prefix="mugv-val-bench-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        data = make_heldout_set(tmp / "latents", samples=args.samples, grid=args.grid,
                                channels=args.channels, text_dim=args.text_dim,
                                text_len=args.text_len)  # fmt: skip
        write_s = time.perf_counter() - t0
        cfg = RunConfig.model_validate(run_config(args, data, tmp / "run"))
        trainer = Trainer(cfg, micro_batches_per_step=args.micro_batches)
        try:
            trainer.run(max_steps=args.warmup)
            _sync()
            t0 = time.perf_counter()
            logs = trainer.run(max_steps=args.iters)
            _sync()
            step_s = (time.perf_counter() - t0) / args.iters
            first = trainer.validate()  # warm-up (caches, autotuning)
            _sync()
            t0 = time.perf_counter()
            second = trainer.validate()
            _sync()
            val_s = time.perf_counter() - t0
            peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        finally:
            trainer.close()
    if first["loss"] != second["loss"]:
        raise RuntimeError(f"two validations of the same weights differ: {first} vs {second}")
    items = args.samples * args.noise_levels
    t, h, w = args.grid
    tokens = t * (h // 2) * (w // 2)
    row = {
        "case": f"{args.hidden}x{args.layers}@{tokens}",
        "samples": args.samples,
        "noise_levels": args.noise_levels,
        "items": items,
        "tokens_per_item": tokens,
        "micro_batches_per_step": args.micro_batches,
        "step_s": step_s,
        "val_s": val_s,
        "val_first_s": first["time_s"],
        "val_items_per_s": items / val_s,
        "train_loss_last": logs[-1].get("loss") if logs else None,
        "val_loss": second["loss"],
        "dataset_write_s": write_s,
        "peak_mem_gib": peak,
        "shares": {},
    }
    for every in args.every_steps:
        row["shares"][str(every)] = val_s / (every * step_s + val_s)
    # micro-batches per GPU per step at which every_steps=500 costs <= 2 % (linear in steps)
    row["micro_batches_for_2pct_at_500"] = val_s * 0.98 / 0.02 / 500 / (step_s / args.micro_batches)
    return row


def table(row: dict, every_steps: list[int]) -> str:
    head = ("| case | items (samples x levels) | micro-batches/step | train step s | validation s "
            "| items/s | " + " | ".join(f"share @ {e}" for e in every_steps)
            + " | micro-batches/step for <= 2 % @ 500 | peak GiB |")  # fmt: skip
    sep = "|" + " --- |" * (8 + len(every_steps))
    peak = "-" if row["peak_mem_gib"] is None else f"{row['peak_mem_gib']:.1f}"
    cells = [
        row["case"], f"{row['items']} ({row['samples']} x {row['noise_levels']})",
        str(row["micro_batches_per_step"]), f"{row['step_s']:.4f}", f"{row['val_s']:.3f}",
        f"{row['val_items_per_s']:.1f}",
        *(f"{100 * row['shares'][str(e)]:.2f} %" for e in every_steps),
        f"{row['micro_batches_for_2pct_at_500']:.1f}", peak,
    ]  # fmt: skip
    return "\n".join([head, sep, "| " + " | ".join(cells) + " |"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="toy sizes for a CPU smoke run")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--noise-levels", type=int, default=8)
    p.add_argument("--hidden", type=int, default=1728)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=72)
    p.add_argument("--grid", type=lambda s: tuple(int(v) for v in s.split("x")), default=(14, 46, 80),
                   help="latent T x H x W (default 14x46x80: 12.9k tokens)")  # fmt: skip
    p.add_argument("--channels", type=int, default=24)
    p.add_argument("--text-dim", type=int, default=4096)
    p.add_argument("--text-len", type=int, default=128)
    p.add_argument("--micro-batches", type=int, default=1, help="micro-batches per train step")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--every-steps", type=int, nargs="+", default=[500, 1000])
    p.add_argument("--attention", default="auto", choices=["auto", "sdpa", "flash", "fa4"])
    p.add_argument("--fused-ops", action="store_true")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)
    if args.tiny:
        args.samples, args.noise_levels = min(args.samples, 4), min(args.noise_levels, 2)
        args.hidden, args.layers, args.head_dim = 48, 2, 12
        args.grid, args.text_dim, args.text_len = (2, 4, 6), 32, 8
        args.warmup, args.iters = 1, 2
    row = measure(args)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    meta = {
        "device": device,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "argv": ["python", "packages/mugv-dit/benchmarks/validation_cost.py", *sys.argv[1:]],
    }
    text = table(row, args.every_steps)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "rows": [row]}, indent=1) + "\n")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(
            f"# mugv-dit validation cost\n\ndevice: {device}, torch {meta['torch']}, "
            f"{meta['date']}; command: `{' '.join(meta['argv'])}`\n\n{text}\n\n"
            "share = validation s / (every_steps x train step s + validation s); one GPU. "
            "Validation splits over DP ranks like training, so N GPUs at the same per-GPU "
            "batch divide the share by N.\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
