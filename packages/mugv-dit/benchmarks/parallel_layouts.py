"""Training-step time of the real trainer under several parallel layouts on the same GPUs.

Runs ``mugv_dit.trainer.Trainer`` (data from latent shards, Megatron's forward-backward
schedule, distributed optimizer) for each layout one after another in the same torchrun
processes and reports the median step time after warm-up, model TFLOP/s and tokens/s per
GPU, peak memory, and each layout's losses (same data, noise and init in every layout, so
they agree up to bf16 rounding). Prints a table, writes JSON.

    python parallel_layouts.py make-data WORK [--grid 14 46 80]
    torchrun --nproc-per-node 2 parallel_layouts.py run WORK --layouts dp pp cp --json out.json

Layouts over the launch's N ranks: ``dp`` (DP=N), ``pp`` (PP=N, 1F1B over the step's
micro-batches), ``cp`` (CP=N, all-to-all sequence parallel), ``tp`` (TP=N + SP).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def make_data(work: Path, grid: tuple[int, int, int], count: int, text_dim: int) -> None:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from mugv_dit_fixtures import make_latent_dataset

    t, h, w = grid
    layout = [(t, h, w, 1 + 8 * (t - 1), 8 * h, 8 * w, count)]
    make_latent_dataset(work / "latents", text_dim=text_dim, layout=layout)


def _layout(name: str, world: int) -> dict:
    if name == "dp":
        return {}
    if name == "pp":
        return {"pipeline_parallel": world}
    if name == "cp":
        return {"context_parallel": world}
    if name == "tp":
        return {"tensor_parallel": world, "sequence_parallel": True}
    raise ValueError(f"unknown layout {name!r}: choose dp, pp, cp, tp")


def run(args) -> None:
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state
    from mugv_dit.cli import quiet_megatron_warnings
    from mugv_dit.config import resolve_config
    from mugv_dit.trainer import Trainer

    quiet_megatron_warnings()
    work = Path(args.work)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    t, h, w = args.grid
    tokens = t * (h // 2) * (w // 2)
    rows = []
    for name in args.layouts:
        raw = {
            "model": {
                "hidden_size": args.hidden,
                "num_layers": args.layers,
                "num_heads": args.hidden // 72,
                "text_dim": args.text_dim,
            },
            "runtime": {"fused_ops": args.fused, "recompute": args.recompute},
            "data": {"path": str(work / "latents"), "tokens_per_batch": tokens},
            "parallel": _layout(name, world),
            "train": {"progress": False, "ema_decay": None, "log_every": 1000},
            "curriculum": [{"name": "main", "steps": 10_000, "lr": 1e-5}],
            "output_dir": str(work / f"run_{name}"),
        }
        cfg = resolve_config(raw)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        trainer = Trainer(cfg, micro_batches_per_step=args.micro_batches)
        try:
            logs = trainer.run(max_steps=args.warmup + args.steps)
        finally:
            trainer.close()
            parallel_state.destroy_model_parallel()
        mem = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
        mem_t = torch.tensor([mem], device="cuda" if torch.cuda.is_available() else "cpu")
        dist.all_reduce(mem_t, op=dist.ReduceOp.MAX)
        timed = logs[args.warmup :]
        step_s = statistics.median(log["time_s"] for log in timed)
        flops = statistics.median(log["flops"] for log in timed)
        rows.append(
            {
                "layout": name,
                "parallel": raw["parallel"],
                "world": world,
                "hidden": args.hidden,
                "layers": args.layers,
                "tokens_per_sample": tokens,
                "samples_per_step": timed[0]["tokens"] // tokens,
                "micro_batches": args.micro_batches,
                "fused_ops": args.fused,
                "recompute": args.recompute,
                "step_s": step_s,
                "step_s_all": [log["time_s"] for log in logs],
                "tflops_per_gpu": flops / step_s / world / 1e12,
                "tokens_per_s_per_gpu": timed[0]["tokens"] / step_s / world,
                "peak_mem_gib_max_rank": float(mem_t.item()),
                "losses": [log["loss"] for log in logs],
            }
        )
    if dist.is_initialized() and dist.get_rank() != 0:
        dist.destroy_process_group()
        return
    print(
        f"{'layout':6} {'step_s':>8} {'TFLOP/s/GPU':>11} {'tok/s/GPU':>10} {'mem GiB':>8}  losses"
    )
    for r in rows:
        losses = " ".join(f"{v:.4f}" for v in r["losses"])
        print(
            f"{r['layout']:6} {r['step_s']:8.3f} {r['tflops_per_gpu']:11.1f} "
            f"{r['tokens_per_s_per_gpu']:10.0f} {r['peak_mem_gib_max_rank']:8.1f}  {losses}"
        )
    if args.json:
        meta = {
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "gpus": world,
            "torch": torch.__version__,
            "argv": sys.argv,
        }
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    if dist.is_initialized():
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make-data", help="write a synthetic latent dataset into WORK/latents")
    mk.add_argument("work")
    mk.add_argument("--grid", type=int, nargs=3, default=[14, 46, 80], help="latent T H W")
    mk.add_argument("--count", type=int, default=8)
    mk.add_argument("--text-dim", type=int, default=4096)
    rn = sub.add_parser("run", help="train each layout for a few steps (under torchrun)")
    rn.add_argument("work")
    rn.add_argument("--layouts", nargs="+", default=["dp", "pp", "cp"])
    rn.add_argument("--grid", type=int, nargs=3, default=[14, 46, 80])
    rn.add_argument("--hidden", type=int, default=1728)
    rn.add_argument("--layers", type=int, default=8)
    rn.add_argument("--text-dim", type=int, default=4096)
    rn.add_argument("--micro-batches", type=int, default=4, help="global micro-batches per step")
    rn.add_argument("--fused", action="store_true", help="mugv_kernels fused ops")
    rn.add_argument("--recompute", default="none", choices=["none", "selective", "full"])
    rn.add_argument("--warmup", type=int, default=3)
    rn.add_argument("--steps", type=int, default=5)
    rn.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.command == "make-data":
        make_data(Path(args.work), tuple(args.grid), args.count, args.text_dim)
    else:
        run(args)


if __name__ == "__main__":
    main()
