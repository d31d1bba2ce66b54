"""Loss curves of the trainer before and after issue 29's defaults (issue 29 item 4).

Arms, each a fresh process running :class:`mugv_dit.trainer.Trainer` on the same synthetic
latent dataset with the same seed and curriculum:

- ``eager``: ``train.cuda_graph=false``, ``runtime.fused_ln_linear=off`` (the path before the
  defaults of 2026-12-07);
- ``defaults``: nothing set, i.e. the current defaults (``train.cuda_graph=auto``,
  ``runtime.fused_ln_linear=auto`` with ``ln_linear_method=recompute``: on CUDA the
  forward+backward graphed and the qkv / fc1 LayerNorm recomputed in the backward);
- ``eager-repeat`` (unless ``--no-repeat``): ``eager`` again, the eager path's own run-to-run
  difference (0 where every kernel is deterministic).

Both arms use ``runtime.fused_ops=true`` (``fused_ln_linear: auto`` applies only with it).
Writes ``DIR/loss_curve.json`` (per arm: the loss and grad-norm curves, step times, graph
captures/replays, how often ``mugv_kernels.ln_linear.modulated_ln_linear`` ran, the resolved
settings; the comparisons) and ``DIR/loss_curve.md``. The comparisons of ``defaults`` (and
``eager-repeat``) against ``eager``: the first step's relative loss difference (same weights,
same batch: the per-step numerics), the largest per-step relative difference over the run
(bf16 trajectories drift apart), and the largest relative difference of 20-step window means
(the curves' shape). Verdict (``match``): every window mean within 1 % of eager's, or within
twice eager's own run-to-run window difference.

GPU (1728 x 8 layers, 12,880 video tokens per sample, 200 steps):
    python loss_curve.py --out DIR
CPU dry run (debug model, 8 steps; ``defaults`` uses the CPU stand-ins of both features:
graphs as GraphedStep's recorded calls via ``train.cuda_graph=true``, and
``fused_ln_linear=on``'s unfused reference inside the same plumbing):
    python loss_curve.py --out DIR --tiny --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WINDOW = 20
#: the GPU case: latent T, H, W (patch 1x2x2 -> 14 x 23 x 40 = 12,880 tokens) and pixel size
GPU_LATENT, GPU_PIXELS, GPU_FRAMES = (14, 46, 80), (368, 640), 105


def arm_settings(name: str, stand_ins: bool) -> dict:
    """The config overrides of one arm (on top of the shared config)."""
    if name.startswith("eager"):
        return {"train": {"cuda_graph": False}, "runtime": {"fused_ln_linear": "off"}}
    if name == "defaults":
        if stand_ins:  # CPU: what auto does on CUDA, through the CPU stand-ins
            return {"train": {"cuda_graph": True}, "runtime": {"fused_ln_linear": "on"}}
        return {}
    raise ValueError(f"unknown arm {name!r}")


def shared_config(data: Path, out: Path, steps: int, tiny: bool) -> dict:
    if tiny:
        model = {"text_dim": 32}
        data_cfg = {"path": str(data), "tokens_per_batch": 64, "seed": 1231}
    else:
        model = {"hidden_size": 1728, "num_heads": 24, "num_layers": 8, "text_dim": 4096}
        data_cfg = {"path": str(data), "tokens_per_batch": 13000, "max_batch_size": 1, "seed": 1}
    return {
        "preset": "debug",
        "model": model,
        "runtime": {"fused_ops": True},
        "objective": {
            "task_ratios": {"t2v": 0.6, "i2v": 0.2, "continuation": 0.2},
            "caption_dropout": 0.1,
        },
        "data": data_cfg,
        "train": {"progress": False, "tensorboard": False, "save_every": 0, "seed": 42},
        "curriculum": [
            {"name": "curve", "steps": steps, "lr": 1e-4, "warmup_steps": min(10, steps)}
        ],
        "output_dir": str(out),
    }


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def make_dataset(path: Path, tiny: bool) -> Path:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from mugv_dit_fixtures import make_latent_dataset

    if tiny:
        return make_latent_dataset(path, layout=[(3, 4, 4, 17, 32, 32, 6)], seed=3)
    (t, h, w), (ph, pw) = GPU_LATENT, GPU_PIXELS
    return make_latent_dataset(
        path, text_dim=4096, layout=[(t, h, w, GPU_FRAMES, ph, pw, 16)], seed=3
    )


# -- one arm (child process) ------------------------------------------------------------------
def run_arm(config: Path, result: Path, stand_ins: bool) -> None:
    import mugv_kernels.ln_linear as ln_linear
    import yaml
    from mugv_dit.config import load_config
    from mugv_dit.optim import graphed_forward_backward
    from mugv_dit.trainer import Trainer

    calls = [0]
    real = ln_linear.modulated_ln_linear

    def counted(*args, **kwargs):  # mugv_dit's ModulatedInput imports it at call time
        calls[0] += 1
        return real(*args, **kwargs)

    ln_linear.modulated_ln_linear = counted
    if stand_ins:  # CPU: let train.cuda_graph=true graph through GraphedStep's recorded calls
        graphed_forward_backward.why_not = lambda *a: None
    cfg = load_config(config)
    trainer = Trainer(cfg)
    trainer.save = lambda: None  # no checkpoints (the run's final one: ~7 GB at 1728 x 8)
    try:
        graphs = trainer.graphs
        if stand_ins and graphs is not None:
            # capture at a layout's first step: the tiny run's layouts (text lengths per
            # batch) seldom repeat
            graphs.graphed.warmup = 0
        trainer.run()
        device = str(trainer.device)
        if trainer.device.type == "cuda":
            import torch

            device = torch.cuda.get_device_name(trainer.device)
    finally:
        trainer.close()
    rows = [json.loads(line) for line in (Path(cfg.output_dir) / "metrics.jsonl").open()]
    rows = [r for r in rows if "loss" in r]
    resolved = yaml.safe_load((Path(cfg.output_dir) / "resolved_config.yaml").read_text())
    out = {
        "device": device,
        "loss": [r["loss"] for r in rows],
        "grad_norm": [r.get("grad_norm") for r in rows],
        "time_s": [r.get("time_s") for r in rows],
        "steps": [r["step"] for r in rows],
        "ln_linear_calls": calls[0],
        "graphs": None,
        "settings": {
            "train.cuda_graph": resolved["train"]["cuda_graph"],
            "runtime.fused_ln_linear": resolved["runtime"]["fused_ln_linear"],
            "runtime.ln_linear_method": resolved["runtime"]["ln_linear_method"],
            "runtime.fused_ops": resolved["runtime"]["fused_ops"],
        },
    }
    if graphs is not None:
        g = graphs.graphed
        out["graphs"] = {
            "captures": g.captures,
            "replays": g.replays,
            "eager_dropped_caption": graphs.eager_steps,
            "failure": None if graphs.failure is None else graphs.failure.message(),
        }
    result.write_text(json.dumps(out))


# -- comparisons (parent) ---------------------------------------------------------------------
def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def window_means(xs: list[float], window: int = WINDOW) -> list[float]:
    return [sum(xs[i : i + window]) / len(xs[i : i + window]) for i in range(0, len(xs), window)]


def compare(got: list[float], want: list[float]) -> dict:
    """Relative differences of curve ``got`` against ``want`` (same steps)."""
    if len(got) != len(want) or not want:
        raise ValueError(f"curves of {len(got)} and {len(want)} steps")
    per_step = [rel(a, b) for a, b in zip(got, want)]
    windows = [rel(a, b) for a, b in zip(window_means(got), window_means(want))]
    return {
        "first_step_rel": per_step[0],
        "max_step_rel": max(per_step),
        "max_step_rel_at": per_step.index(max(per_step)),
        "max_window_rel": max(windows),
        "window_rel": windows,
    }


def verdict(against_eager: dict, eager_spread: dict | None) -> bool:
    limit = 1e-2
    if eager_spread is not None:
        limit = max(limit, 2 * eager_spread["max_window_rel"])
    return against_eager["max_window_rel"] <= limit


def render(result: dict) -> str:
    arms, cmp_ = result["arms"], result["comparisons"]
    lines = [
        f"# Loss curves before / after issue 29's defaults: {result['device']}, {result['date']}",
        "",
        f"`{result['command']}`: {result['case']}, {result['steps']} steps, same seed and data.",
        "",
        "| arm | train.cuda_graph | fused_ln_linear / method | graphs (captures / replays / "
        "eager) | ln_linear calls | median step s | final loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, a in arms.items():
        s, g = a["settings"], a["graphs"]
        graphs = "-" if g is None else f"{g['captures']} / {g['replays']} / "
        if g is not None:
            graphs += f"{g['eager_dropped_caption']}" + (" FAILED" if g["failure"] else "")
        times = sorted(t for t in a["time_s"][1:] if t is not None) or [float("nan")]
        lines.append(
            f"| {name} | {s['train.cuda_graph']} | {s['runtime.fused_ln_linear']} / "
            f"{s['runtime.ln_linear_method']} | {graphs} | {a['ln_linear_calls']} | "
            f"{times[len(times) // 2]:.4f} | {a['loss'][-1]:.6f} |"
        )
    lines += [
        "",
        f"| against eager | first step rel | max per-step rel (step) | max {WINDOW}-step window "
        "rel | match |",
        "|---|---|---|---|---|",
    ]
    for name, c in cmp_.items():
        lines.append(
            f"| {name} | {c['first_step_rel']:.2e} | {c['max_step_rel']:.2e} "
            f"({c['max_step_rel_at']}) | {c['max_window_rel']:.2e} | "
            f"{'yes' if c.get('match') else 'no' if 'match' in c else ''} |"
        )
    lines += ["", f"| step | {' | '.join(arms)} |", "|---|" + "---|" * len(arms)]
    steps = len(next(iter(arms.values()))["loss"])
    for i in sorted({*range(0, steps, max(1, steps // 20)), steps - 1}):
        lines.append(f"| {i} | " + " | ".join(f"{a['loss'][i]:.6f}" for a in arms.values()) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, help="output folder (loss_curve.json / .md)")
    p.add_argument("--steps", type=int, default=None, help="default: 200 (GPU), 8 (--tiny)")
    p.add_argument("--tiny", action="store_true", help="debug model and data (CPU dry run)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--no-repeat", action="store_true", help="skip the eager-repeat arm")
    p.add_argument("--arm-timeout", type=int, default=300, help="seconds per arm")
    p.add_argument("--work", type=Path, help="dataset + run folders (default: a temporary "
                   "folder, removed at the end)")  # fmt: skip
    p.add_argument("--arm", help=argparse.SUPPRESS)  # child: run one arm
    p.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--stand-ins", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.arm:
        run_arm(args.config, args.result, args.stand_ins)
        return 0
    if args.out is None:
        p.error("--out is required")
    stand_ins = args.device == "cpu"
    steps = args.steps or (8 if args.tiny else 200)
    args.out.mkdir(parents=True, exist_ok=True)
    # the dataset and the run folders stay out of --out (what a GPU call sends back)
    work = Path(tempfile.mkdtemp(prefix="loss_curve_")) if args.work is None else args.work
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _run_arms(args, argv, work, stand_ins, steps)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def _run_arms(args, argv, work: Path, stand_ins: bool, steps: int) -> int:
    import yaml
    from mugv_formats.lifecycle import die_with_parent

    arms_dir = args.out / "arms"  # per arm: config, log, result
    arms_dir.mkdir(exist_ok=True)
    data = make_dataset(work / "latents", args.tiny)
    env = dict(os.environ)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)  # each arm is its own single-process run
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    names = ["eager", "defaults"] + ([] if args.no_repeat else ["eager-repeat"])
    arms = {}
    for name in names:
        raw = merge(shared_config(data, work / f"run-{name}", steps, args.tiny),
                    arm_settings(name, stand_ins))  # fmt: skip
        cfg_path = arms_dir / f"{name}.yaml"
        cfg_path.write_text(yaml.safe_dump(raw))
        result = arms_dir / f"{name}.json"
        cmd = [sys.executable, __file__, "--arm", name, "--config", str(cfg_path),
               "--result", str(result)] + (["--stand-ins"] if stand_ins else [])  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, timeout=args.arm_timeout, capture_output=True,
                              text=True, preexec_fn=die_with_parent)  # fmt: skip
        (arms_dir / f"{name}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            print(f"arm {name} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}", flush=True)
            return 1
        arms[name] = json.loads(result.read_text())
        print(f"arm {name}: {len(arms[name]['loss'])} steps in {time.perf_counter() - t0:.0f} s, "
              f"final loss {arms[name]['loss'][-1]:.6f}, graphs {arms[name]['graphs']}, "
              f"ln_linear calls {arms[name]['ln_linear_calls']}", flush=True)  # fmt: skip
    spread = None
    comparisons = {}
    if "eager-repeat" in arms:
        spread = comparisons["eager-repeat"] = compare(
            arms["eager-repeat"]["loss"], arms["eager"]["loss"]
        )
    comparisons["defaults"] = compare(arms["defaults"]["loss"], arms["eager"]["loss"])
    comparisons["defaults"]["match"] = verdict(comparisons["defaults"], spread)
    case = "debug model, tiny latents" if args.tiny else (
        "1728 hidden x 8 layers, 12,880 video tokens per sample, batch 1, bf16")  # fmt: skip
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": arms["eager"]["device"],
        "command": " ".join(["loss_curve.py", *(argv if argv is not None else sys.argv[1:])]),
        "case": case,
        "steps": steps,
        "arms": arms,
        "comparisons": comparisons,
    }
    (args.out / "loss_curve.json").write_text(json.dumps(result, indent=1))
    text = render(result)
    (args.out / "loss_curve.md").write_text(text)
    print(text, flush=True)
    c = comparisons["defaults"]
    print(f"loss curve: defaults vs eager: first step {c['first_step_rel']:.2e}, max per-step "
          f"{c['max_step_rel']:.2e}, max window {c['max_window_rel']:.2e}"
          + ("" if spread is None else f" (eager vs eager: window {spread['max_window_rel']:.2e})")
          + f" -> {'MATCH' if c['match'] else 'DIFFER'}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
