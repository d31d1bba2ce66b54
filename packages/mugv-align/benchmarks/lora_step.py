"""Step time and peak memory of LoRA post-training on one GPU (issue 26's "Numbers").

    # the 10b preset at 720p x 105 frames: LoRA-SFT step vs LoRA-DPO step (one pair)
    uv run python packages/mugv-align/benchmarks/lora_step.py --case 10b --output OUT
    # 2b width x 8 layers at 12,896 tokens: full-parameter DPO vs LoRA-DPO
    uv run python packages/mugv-align/benchmarks/lora_step.py --case 2b8 --output OUT
    # the same code at tiny sizes on the CPU (no timing value): a check of the script
    uv run python packages/mugv-align/benchmarks/lora_step.py --case tiny --output /tmp/lora

Cases (every run is mugv-align's AlignTrainer on the same two samples, one after another in
one process, no EMA):

* ``10b``: the ``10b`` preset (hidden 3456, 56 layers) on latents 24 x 14 x 90 x 160 (720p,
  105 frames: 50,400 video tokens per sample) with 120 text tokens; rank-64 adapters on
  attention + FFN (``lora.targets`` default: qkv, proj, q, kv, fc1, fc2), adapters in fp32 under
  the frozen bf16 base. Runs: ``lora_sft`` (``mode: sft``, the two samples as one micro-batch)
  and ``lora_dpo`` (``mode: dpo``, the two samples as one pair; reference = the policy with its
  adapters off, no second model). Goals: ``lora_dpo`` peak < 80 GB (one 80 GB GPU) and its step
  <= 1.6x ``lora_sft``'s.
* ``2b8``: the 2b width (1728) cut to 8 layers at 24 x 8 x 62 x 104 (12,896 tokens, the shape of
  ``dpo_step.py``): ``full_dpo`` (every weight trains, live bf16 reference model) against
  ``lora_dpo`` (rank 64, reference = adapters off), for scale.
* ``tiny``: the debug preset on 4 x 2 x 4 x 4 latents, CPU.

``--recompute`` lists the activation-recompute settings to try, fastest first: each run takes
the first that does not run out of GPU memory (an out-of-memory attempt is recorded). At 100.8k
tokens per micro-batch only ``full`` can fit the 10b (the stored block inputs alone are 56 x
100.8k x 3456 x 2 B = 39 GB beside 21.4 GB of bf16 weights), so it is the ``10b`` default.

Each run trains ``--steps`` steps; the table reports the median step time after ``--warmup``
steps and the peak allocated GPU memory of the run. Writes ``lora_step_<case>.json`` and
``.md`` (device, date, command) under ``--output``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from dpo_step import _dataset, _tensorboard_or_stub

#: case -> (preset, preset overrides, latent C,T,H,W, text tokens, default recompute, runs)
CASES = {
    "10b": ("10b", {}, (24, 14, 90, 160), 120, "full", ("lora_sft", "lora_dpo")),
    "2b8": ("2b", {"num_layers": 8}, (24, 8, 62, 104), 120, "none", ("full_dpo", "lora_dpo")),
    "tiny": ("debug", {"in_channels": 4}, (4, 2, 4, 4), 5, "none", ("lora_sft", "lora_dpo")),
}
GOALS = {"10b": {"lora_dpo_over_lora_sft": 1.6, "lora_dpo_peak_gib": 80e9 / 2**30}}


def _configs(tmp: Path, model, lat: Path, tokens: int, args, recompute: str) -> dict:
    """The run configs (resolved later) of every run name, at activation recompute
    ``recompute``."""
    base = {
        "model": model.model_dump(mode="json"),
        "runtime": {"recompute": recompute, "fused_ops": args.fused_ops},
        "objective": {"caption_dropout": 0.0, "task_ratios": {"t2v": 1.0}},
        "data": {"path": str(lat), "tokens_per_batch": 2 * tokens, "max_batch_size": 2},
        "train": {"progress": False, "ema_decay": None, "tensorboard": False},
        "curriculum": [{"name": "main", "steps": args.steps, "lr": 1e-5}],
    }
    lora = {"rank": args.rank, "alpha": float(args.rank), "dtype": "float32"}
    dpo = {
        "mode": "dpo",
        "preference": [{"path": str(tmp / "prefs")}],
        "beta": 500.0,
        "sft_weight": 0.1,
        "ema_sigma_rels": [],
    }
    sft = {"mode": "sft", "ema_sigma_rels": []}
    full_train = {**base["train"], "init_from": str(tmp / "init")}
    return {
        "lora_sft": {**base, "align": sft, "lora": lora},
        "lora_dpo": {**base, "align": dpo, "lora": lora},
        "full_dpo": {**base, "train": full_train, "align": dpo},
    }


def _write_init(tmp: Path, model) -> None:
    """A random export of ``model`` (the full-parameter run's policy and reference)."""
    from megatron.core import parallel_state
    from mugv_dit import build_model
    from mugv_dit.interop.export import full_state_dict, save_export
    from mugv_dit.parallel import init_distributed

    init_distributed(1)
    torch.manual_seed(0)
    m = build_model(model, dtype=torch.bfloat16)
    save_export(tmp / "init", model, full_state_dict(m))
    del m
    parallel_state.destroy_model_parallel()


def _measure(name: str, raw: dict, out_dir: Path, args, cuda: bool) -> dict:
    """One run: build the AlignTrainer, train, time and measure it."""
    from megatron.core import parallel_state
    from mugv_align.config import resolve_align_config
    from mugv_align.trainer import AlignTrainer

    # the previous run's trainer sits in reference cycles until collected (dpo_step.py)
    gc.collect()
    baseline = 0
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    cfg = resolve_align_config({**raw, "output_dir": str(out_dir)})
    trainer = AlignTrainer(cfg, micro_batches_per_step=1)
    try:
        model = trainer.model.module
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        ref_model = trainer.ref_model is not None
        logs = trainer.run()
    finally:
        trainer.close()
        del trainer
        parallel_state.destroy_model_parallel()
    times = [log["time_s"] for log in logs[args.warmup :]] or [logs[-1]["time_s"]]
    return {
        "step_ms": 1000 * statistics.median(times),
        "peak_gib": (torch.cuda.max_memory_allocated() - baseline) / 2**30 if cuda else 0.0,
        "baseline_gib": baseline / 2**30,
        "recompute": raw["runtime"]["recompute"],
        "trainable_params": trainable,
        "params": total,
        "reference_model": ref_model,
        "last_loss": logs[-1].get("loss"),
    }


def _report(args, case: str, model, shape, tokens: int, results: dict, cuda: bool) -> dict:
    first = next((r for r in results.values() if "step_ms" in r), None)
    for r in results.values():
        if "step_ms" in r and first is not None:
            r["time_ratio"] = r["step_ms"] / first["step_ms"]
    doc = {
        "device": torch.cuda.get_device_name() if cuda else "cpu (smoke, no timing value)",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes"),
        "command": " ".join(sys.argv),
        "case": case,
        "shape": {
            "hidden": model.hidden_size,
            "layers": model.num_layers,
            "latent": shape,
            "video_tokens_per_sample": tokens,
            "text_tokens": args.text_len,
        },
        "lora": {"rank": args.rank, "alpha": float(args.rank), "targets": "default"},
        "goals": GOALS.get(case, {}),
        "results": results,
    }
    if case == "10b" and all("step_ms" in results.get(k, {}) for k in ("lora_sft", "lora_dpo")):
        sft, dpo = results["lora_sft"], results["lora_dpo"]
        doc["goals_met"] = {
            "lora_dpo_over_lora_sft": dpo["step_ms"] / sft["step_ms"] <= 1.6,
            "lora_dpo_fits_80GB": cuda and dpo["peak_gib"] < 80e9 / 2**30,
        }
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"lora_step_{case}.json").write_text(json.dumps(doc, indent=2))
    lines = [
        f"# LoRA step ({case}) — {doc['device']}, {doc['date']}",
        "",
        f"Command: `{doc['command']}`",
        "",
        f"hidden {model.hidden_size}, {model.num_layers} layers, {tokens} video tokens + "
        f"{args.text_len} text tokens per sample, two samples per step (one DPO pair); "
        f"LoRA rank {args.rank} on attention + FFN",
        "",
        "| run | recompute | trainable params | step (ms) | x first run | peak (GiB) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if "step_ms" not in r:
            lines.append(f"| {name} | {r.get('tried')} | - | {r['error']} | - | - |")
            continue
        lines.append(
            f"| {name} | {r['recompute']} | {r['trainable_params']:,} | {r['step_ms']:.1f} | "
            f"{r['time_ratio']:.3f} | {r['peak_gib']:.2f} |"
        )
    if "goals_met" in doc:
        lines += ["", f"Goals (DPO <= 1.6x SFT, DPO peak < 80 GB): {doc['goals_met']}"]
    (out / f"lora_step_{case}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return doc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", choices=list(CASES), default="10b")
    ap.add_argument("--output", default="docs/benchmarks/align")
    ap.add_argument("--steps", type=int, default=None, help="default: 10b 2, 2b8 10, tiny 3")
    ap.add_argument("--warmup", type=int, default=None, help="default: 10b 1, 2b8 4, tiny 1")
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument(
        "--recompute",
        default=None,
        help="comma list tried in order, fastest first (default: the case's, see above)",
    )
    ap.add_argument("--runs", nargs="+", default=None, help="subset of the case's runs")
    ap.add_argument(
        "--no-fused-ops", dest="fused_ops", action="store_false", help="torch ops, not mugv_kernels"
    )
    args = ap.parse_args(argv)
    preset, overrides, shape, args.text_len, recompute, runs = CASES[args.case]
    defaults = {"10b": (2, 1), "2b8": (10, 4), "tiny": (3, 1)}[args.case]
    args.steps = args.steps or defaults[0]
    args.warmup = defaults[1] if args.warmup is None else args.warmup
    runs = args.runs or runs
    cuda = torch.cuda.is_available()
    if not cuda and args.case != "tiny":
        print("needs a CUDA device (or --case tiny)", file=sys.stderr)
        return 2
    if not cuda:
        args.fused_ops = False
    _tensorboard_or_stub()
    from mugv_dit.cli import quiet_megatron_warnings
    from mugv_dit.config import model_preset
    from mugv_formats import PreferencePair, write_preference_data

    quiet_megatron_warnings()
    model = model_preset(preset, **{"in_channels": shape[0], **overrides})
    tmp = Path(tempfile.mkdtemp(prefix="mugv-lora-bench-"))
    lat = _dataset(tmp, model.text_dim, shape, args.text_len)
    write_preference_data(
        tmp / "prefs",
        [PreferencePair(chosen="win", rejected="lose")],
        latent_dataset=lat,
        producer="bench",
    )
    if "full_dpo" in runs:
        _write_init(tmp, model)
    tokens = shape[1] * (shape[2] // 2) * (shape[3] // 2)
    settings = (args.recompute or recompute).split(",")
    results = {}
    for name in runs:
        for i, setting in enumerate(settings):
            raw = _configs(tmp, model, lat, tokens, args, setting)[name]
            try:
                results[name] = _measure(name, raw, tmp / f"{name}_{i}", args, cuda)
                break
            except torch.cuda.OutOfMemoryError as e:
                gc.collect()
                torch.cuda.empty_cache()
                results[name] = {"tried": setting, "error": f"out of memory ({str(e)[:80]})"}
                print(f"{name}: out of memory with recompute={setting}", flush=True)
        print(name, results[name], flush=True)
    doc = _report(args, args.case, model, shape, tokens, results, cuda)
    if "goals_met" in doc:
        print(yaml.safe_dump({"goals_met": doc["goals_met"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
