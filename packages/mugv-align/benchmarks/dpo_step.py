"""Step time and peak memory of a Flow-DPO step (one pair) against a pre-training step on the
same two samples, in one process on one GPU (issue 12's "Numbers").

    uv run python packages/mugv-align/benchmarks/dpo_step.py --output docs/benchmarks/align

Model: the 2b preset (hidden 1728) cut to 8 layers; one sample = 8 x 62 x 104 latents
(12,896 video tokens with patch 1x2x2), 120 text tokens. Three runs, one after another:

* pretrain: mugv-dit's Trainer, one micro-batch of the two samples;
* dpo_live: AlignTrainer, mode dpo, one pair (the same two samples), live bf16 reference;
* dpo_precomputed: the same with reference errors read from a file.

No run keeps an EMA (the power EMAs cost the same in SFT and DPO and are not what is
measured). Each run trains ``--steps`` steps; the table reports the median step time after
``--warmup`` steps and the peak allocated memory. Goals: dpo_live <= 1.4x pretrain,
dpo_precomputed <= 1.05x, peak(dpo_live) <= peak(pretrain) + reference bf16 weights.
Writes ``dpo_step.json`` and ``dpo_step.md`` (device, date, command) under ``--output``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml


def _dataset(root: Path, text_dim: int, shape, text_len: int) -> Path:
    from mugv_formats import LatentRecord, LatentShardWriter

    c, t, h, w = shape
    header = LatentShardWriter.make_header(
        producer="mugv-align-bench",
        vae_checkpoint_id="bench",
        latent_channels=c,
        latent_mean=[0.0] * c,
        latent_std=[1.0] * c,
        text_encoder_id="bench",
        text_dim=text_dim,
        max_text_len=300,
    )
    rng = np.random.default_rng(0)
    text = rng.standard_normal((text_len, text_dim)).astype(np.float32)
    with LatentShardWriter(root / "lat", header, energon=False) as wr:
        for key in ("win", "lose"):
            lat = rng.standard_normal(shape).astype(np.float32)
            wr.write(
                LatentRecord(
                    key=key,
                    caption="c",
                    fps=24.0,
                    num_frames=(t - 1) * 8 + 1,
                    height=h * 8,
                    width=w * 8,
                ),
                lat,
                text,
            )
    return root / "lat"


def _tensorboard_or_stub() -> None:
    """The trainers log to TensorBoard; a GPU machine without the package still times the
    steps (the stub writer drops the scalars)."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        import types

        class SummaryWriter:
            def __init__(self, *args, **kwargs):
                pass

            def __getattr__(self, name):
                return lambda *args, **kwargs: None

        stub = types.ModuleType("torch.utils.tensorboard")
        stub.SummaryWriter = SummaryWriter
        sys.modules["torch.utils.tensorboard"] = stub
        print("tensorboard is not installed: scalars are not logged (timing unaffected)")


RUNS = ("pretrain", "dpo_live", "dpo_precomputed")


def _report(args, model, shape, tokens: int, ref_bytes: int, results: dict, cuda: bool) -> None:
    """Ratios against the pre-training step; ``dpo_step.json`` / ``.md`` and the goals."""
    pt = results["pretrain"]
    for r in results.values():
        r["time_ratio"] = r["step_ms"] / pt["step_ms"]
        r["extra_peak_gib"] = r["peak_gib"] - pt["peak_gib"]
    doc = {
        "device": torch.cuda.get_device_name() if cuda else "cpu (smoke)",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes"),
        "command": " ".join(sys.argv),
        "shape": {
            "hidden": model.hidden_size,
            "layers": args.layers,
            "latent": shape,
            "video_tokens_per_sample": tokens,
            "text_tokens": args.text_len,
        },
        "reference_bf16_gib": ref_bytes / 2**30,
        "goals": {"dpo_live_ratio": 1.4, "dpo_precomputed_ratio": 1.05},
        "results": results,
    }
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dpo_step.json").write_text(json.dumps(doc, indent=2))
    lines = [
        f"# DPO step vs pre-training step — {doc['device']}, {doc['date']}",
        "",
        f"Command: `{doc['command']}`",
        "",
        f"hidden {model.hidden_size}, {args.layers} layers, {tokens} video tokens per sample; "
        f"reference bf16 weights {doc['reference_bf16_gib']:.2f} GiB",
        "",
        "| run | step (ms) | x pre-training | peak (GiB) | + peak vs pre-training (GiB) |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['step_ms']:.1f} | {r['time_ratio']:.3f} | "
            f"{r['peak_gib']:.2f} | {r['extra_peak_gib']:+.2f} |"
        )
    (out / "dpo_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    goals = {}
    if "dpo_live" in results:
        goals["live"] = results["dpo_live"]["time_ratio"] <= 1.4
        goals["memory"] = results["dpo_live"]["extra_peak_gib"] <= doc["reference_bf16_gib"] + 0.05
    if "dpo_precomputed" in results:
        goals["precomputed"] = results["dpo_precomputed"]["time_ratio"] <= 1.05
    print(yaml.safe_dump({"goals_met": goals}))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--output", default="docs/benchmarks/align")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--shape", default="24,8,62,104", help="latent C,T,H,W of one sample")
    ap.add_argument("--text-len", type=int, default=120)
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="tiny CPU run of the script itself (debug preset, no memory numbers)",
    )
    ap.add_argument(
        "--runs",
        nargs="+",
        default=list(RUNS),
        choices=list(RUNS),
        help="which runs (pretrain always: the ratios are against it)",
    )
    args = ap.parse_args()
    runs = {"pretrain", *args.runs}
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("needs a CUDA device (or --smoke)", file=sys.stderr)
        return 2
    _tensorboard_or_stub()
    from megatron.core import parallel_state
    from mugv_align.config import resolve_align_config
    from mugv_align.reference import precompute_reference_errors
    from mugv_align.trainer import AlignTrainer
    from mugv_dit import build_model
    from mugv_dit.cli import quiet_megatron_warnings
    from mugv_dit.config import model_preset, resolve_config
    from mugv_dit.interop.export import full_state_dict, save_export
    from mugv_dit.parallel import init_distributed
    from mugv_dit.trainer import Trainer
    from mugv_formats import PreferencePair, write_preference_data

    quiet_megatron_warnings()
    shape = tuple(int(x) for x in args.shape.split(","))
    if args.smoke:
        shape, args.steps, args.warmup, args.text_len = (4, 2, 4, 4), 3, 1, 5
        model = model_preset("debug", in_channels=4)
    else:
        model = model_preset("2b", num_layers=args.layers, in_channels=shape[0])
    tmp = Path(tempfile.mkdtemp(prefix="mugv-align-bench-"))
    lat = _dataset(tmp, model.text_dim, shape, args.text_len)
    write_preference_data(
        tmp / "prefs",
        [PreferencePair(chosen="win", rejected="lose")],
        latent_dataset=lat,
        producer="bench",
    )
    init_distributed(1)
    torch.manual_seed(0)
    m = build_model(model)
    save_export(tmp / "init", model, full_state_dict(m))
    ref_bytes = sum(p.numel() for p in m.parameters()) * 2  # bf16
    del m
    parallel_state.destroy_model_parallel()
    tokens = shape[1] * (shape[2] // 2) * (shape[3] // 2)
    base = {
        "model": model.model_dump(mode="json"),
        "objective": {"caption_dropout": 0.0, "task_ratios": {"t2v": 1.0}},
        "data": {"path": str(lat), "tokens_per_batch": 2 * tokens, "max_batch_size": 2},
        "train": {"progress": False, "ema_decay": None, "init_from": str(tmp / "init")},
        "curriculum": [{"name": "main", "steps": args.steps, "lr": 1e-5}],
    }
    align = {
        "mode": "dpo",
        "preference": [{"path": str(tmp / "prefs")}],
        "beta": 500.0,
        "sft_weight": 0.1,
        "ema_sigma_rels": [],
    }
    results = {}

    def measure(name, make):
        import gc

        # the previous run's trainer sits in reference cycles until collected: without this its
        # model and optimizer state still count in the next run's peak (seen on the H200,
        # 2026-12-03: +3.9 GiB for a DPO run without any reference model)
        gc.collect()
        baseline = 0
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            baseline = torch.cuda.memory_allocated()
        trainer = make()
        try:
            logs = trainer.run()
        finally:
            trainer.close()
            parallel_state.destroy_model_parallel()
        times = [log["time_s"] for log in logs[args.warmup :]]
        results[name] = {
            "step_ms": 1000 * statistics.median(times),
            "peak_gib": (torch.cuda.max_memory_allocated() - baseline) / 2**30 if cuda else 0.0,
            "baseline_gib": baseline / 2**30,
            "last_loss": logs[-1].get("loss"),
        }
        print(name, results[name], flush=True)

    measure(
        "pretrain",
        lambda: Trainer(
            resolve_config({**base, "output_dir": str(tmp / "pt")}), micro_batches_per_step=1
        ),
    )
    live = {**base, "align": align, "output_dir": str(tmp / "live")}
    if "dpo_live" in runs:
        measure(
            "dpo_live", lambda: AlignTrainer(resolve_align_config(live), micro_batches_per_step=1)
        )
    pre_cfg = resolve_align_config(
        {
            **base,
            "align": {
                **align,
                "reference": "precomputed",
                "reference_errors": str(tmp / "ref.json"),
            },
            "output_dir": str(tmp / "pre"),
        }
    )
    if "dpo_precomputed" in runs:
        precompute_reference_errors(pre_cfg, tmp / "ref.json")
        measure("dpo_precomputed", lambda: AlignTrainer(pre_cfg, micro_batches_per_step=1))

    _report(args, model, shape, tokens, ref_bytes, results, cuda)
    return 0


if __name__ == "__main__":
    sys.exit(main())
