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
  attention + FFN (``lora.targets`` default: qkv, proj, q, kv, fc1, fc2), fp32 adapter
  parameters (bf16 GEMMs) under the frozen bf16 base. Runs, in this order: ``lora_dpo``
  (``mode: dpo``, the two samples as one pair; reference = the policy with its adapters off,
  no second model) and ``lora_sft`` (``mode: sft`` on the same two samples). Both process the
  pair one sample at a time (``--chunking per_sample``: SFT as two accumulated micro-batches
  of one sample, DPO with ``align.pair_chunking: per_sample``) with full recompute: the joint
  pair (both samples in one micro-batch) ran out of memory on an 80 GB H100 (2026-12-07).
  DPO's extra work over SFT: per pair two no-grad reference forwards (adapters off) and one
  no-grad policy forward (the loser's, for the winner's loss coefficient).
  One timed step each (``--steps 2 --warmup 1`` when time allows), after an untimed warm-up
  run of each at the same width with 2 layers and ~2k tokens (kernel compilation and
  selection); start-up costs left fall on the first run, so DPO-first makes the DPO/SFT
  ratio an upper bound.
  Goals: ``lora_dpo`` peak < 80 GB (one 80 GB GPU) and its step <= 1.6x ``lora_sft``'s.
* ``2b8``: the 2b width (1728) cut to 8 layers at 24 x 8 x 62 x 104 (12,896 tokens, the shape of
  ``dpo_step.py``): ``full_dpo`` (every weight trains, live bf16 reference model) against
  ``lora_dpo`` (rank 64, reference = adapters off), for scale; joint pairs, no recompute.
* ``tiny``: the debug preset on 4 x 2 x 4 x 4 latents, CPU.

Memory on paper (``memory_estimate``, in the JSON and the table) for one micro-batch of
``s`` samples of 50,520 tokens with full recompute: bf16 weights 21.4 GB; fp32 adapters +
grads + Adam moments 16 B x 286M = 4.6 GB; stored block inputs 56 x s x 50,520 x 3456 x 2 B
= 19.6 GB x s; one block's recompute transient ~32 x s x 50,520 x 3456 x 2 B = 11.2 GB x s.
s = 2 (joint): ~88 GB, over 80; s = 1 (per_sample): ~57 GB. Selective recompute stores
every block's attention activations (~20 widths x 56 blocks: hundreds of GB), and host
offload of the block inputs is not needed at s = 1.

``--recompute`` / ``--chunking`` list the settings to try, fastest first: each run takes the
first that does not run out of GPU memory (an out-of-memory attempt is recorded).
``--cpu-init`` draws the random weights on the CPU as mugv-dit does (default here: on the
GPU, which saves minutes per 10b build and does not change the step).

Each run trains ``--steps`` steps; the table reports the median step time after ``--warmup``
steps and the peak allocated GPU memory of the run. Writes ``lora_step_<case>.json`` and
``.md`` (device, date, command) under ``--output`` after every run.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from dpo_step import _dataset, _tensorboard_or_stub

#: case -> (preset, preset overrides, latent C,T,H,W, text tokens, default recompute,
#: default pair chunking, runs in order)
CASES = {
    "10b": ("10b", {}, (24, 14, 90, 160), 120, "full", "per_sample", ("lora_dpo", "lora_sft")),
    "2b8": (
        "2b",
        {"num_layers": 8},
        (24, 8, 62, 104),
        120,
        "none",
        "joint",
        ("full_dpo", "lora_dpo"),
    ),
    "tiny": (
        "debug",
        {"in_channels": 4},
        (4, 2, 4, 4),
        5,
        "none",
        "per_sample",
        ("lora_dpo", "lora_sft"),
    ),
}
#: bf16 elements per token and hidden unit alive while one block is recomputed and
#: differentiated (full recompute): its stored activations (~26: norms, qkv, q/k after
#: RoPE, attention outputs, fc1 and GELU outputs (4 + 4), gates) plus gradients in flight
BLOCK_TRANSIENT_WIDTHS = 32
GOALS = {"10b": {"lora_dpo_over_lora_sft": 1.6, "lora_dpo_peak_gib": 80e9 / 2**30}}


def _configs(tmp: Path, model, lat: Path, tokens: int, args, recompute: str, chunking: str):
    """The run configs (resolved later) of every run name, at activation recompute
    ``recompute`` and pair chunking ``chunking``, and each run's micro-batches per step.
    ``per_sample``: SFT takes the pair's two samples as two accumulated micro-batches of one
    sample (plain gradient accumulation), DPO sets ``align.pair_chunking: per_sample``;
    ``joint``: both samples in one micro-batch."""
    per = 1 if chunking == "per_sample" else 2
    base = {
        "model": model.model_dump(mode="json"),
        "runtime": {"recompute": recompute, "fused_ops": args.fused_ops},
        "objective": {"caption_dropout": 0.0, "task_ratios": {"t2v": 1.0}},
        "data": {"path": str(lat), "tokens_per_batch": per * tokens, "max_batch_size": per},
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
        "pair_chunking": chunking,
    }
    sft = {"mode": "sft", "ema_sigma_rels": []}
    full_train = {**base["train"], "init_from": str(tmp / "init")}
    sft_micro = 2 // per
    return {
        "lora_sft": ({**base, "align": sft, "lora": lora}, sft_micro),
        "lora_dpo": ({**base, "align": dpo, "lora": lora}, 1),
        "full_dpo": ({**base, "train": full_train, "align": dpo}, 1),
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


def _init_on_gpu(on: bool) -> None:
    """Benchmark only: the trainer draws the (random) weights on the GPU instead of whole on
    the CPU (mugv-dit's TP-invariant default, minutes at 10B); the step is the same.
    ``on=False`` restores mugv-dit's build."""
    import mugv_dit.trainer
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    build = getattr(mugv_dit.trainer.build_model, "cpu_built", mugv_dit.trainer.build_model)

    def gpu_build(*args, **kw):
        model_parallel_cuda_manual_seed(0)  # Megatron's GPU init draws from this tracker
        return build(*args, cpu_init=False, **kw)

    gpu_build.cpu_built = build
    mugv_dit.trainer.build_model = gpu_build if on else build


def memory_estimate(cfg, params: int, trainable: int, tokens: int, text: int, rows: int) -> dict:
    """Peak GPU memory on paper (GB) of a LoRA step with full recompute and ``rows`` samples
    per micro-batch: bf16 weights; fp32 adapters, their grads and Adam moments (16 B each);
    the block inputs full recompute stores (layers x tokens x hidden x 2 B); one block's
    recompute transient (BLOCK_TRANSIENT_WIDTHS x tokens x hidden x 2 B)."""
    n = rows * (tokens + text)
    gb = 1e-9
    parts = {
        "weights_bf16": params * 2 * gb,
        "adapters_grads_adam_fp32": trainable * 16 * gb,
        "stored_block_inputs": cfg.num_layers * n * cfg.hidden_size * 2 * gb,
        "one_block_transient": BLOCK_TRANSIENT_WIDTHS * n * cfg.hidden_size * 2 * gb,
    }
    parts = {k: round(v, 1) for k, v in parts.items()}
    return {**parts, "total": round(sum(parts.values()), 1), "samples_per_micro_batch": rows}


def _measure(
    name: str, raw: dict, micro: int, chunking: str, out_dir: Path, args, cuda: bool
) -> dict:
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
    t0 = time.perf_counter()
    if cuda and args.gpu_init:
        try:
            _init_on_gpu(True)
            trainer = AlignTrainer(cfg, micro_batches_per_step=micro)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as e:  # fall back to mugv-dit's CPU init, in a fresh folder
            print(f"{name}: GPU init failed ({e!r:.300}); CPU init", flush=True)
            _init_on_gpu(False)
            parallel_state.destroy_model_parallel()
            gc.collect()
            torch.cuda.empty_cache()
            cfg = resolve_align_config({**raw, "output_dir": f"{out_dir}_cpu_init"})
            trainer = AlignTrainer(cfg, micro_batches_per_step=micro)
    else:
        trainer = AlignTrainer(cfg, micro_batches_per_step=micro)
    build_s = time.perf_counter() - t0
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
    rows = 1 if chunking == "per_sample" else 2
    return {
        "step_ms": 1000 * statistics.median(times),
        "step_times_s": [round(log["time_s"], 3) for log in logs],
        "build_s": round(build_s, 1),
        "pair_chunking": chunking,
        "micro_batches": micro,
        "memory_estimate_gb": memory_estimate(
            cfg.model, total, trainable, args.tokens, args.text_len, rows
        ),
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
        doc["lora_dpo_over_lora_sft"] = round(dpo["step_ms"] / sft["step_ms"], 3)
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
        "| run | recompute | pair chunking | trainable params | step (ms) | x first run "
        "| peak (GiB) | estimate (GB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if "step_ms" not in r:
            lines.append(f"| {name} | {r.get('tried')} | - | - | {r['error']} | - | - | - |")
            continue
        lines.append(
            f"| {name} | {r['recompute']} | {r['pair_chunking']} | {r['trainable_params']:,} "
            f"| {r['step_ms']:.1f} | {r['time_ratio']:.3f} | {r['peak_gib']:.2f} "
            f"| {r['memory_estimate_gb']['total']} |"
        )
    if case == "10b":
        lines += [
            "",
            "Estimate on paper (GB): weights + adapters/grads/Adam + stored block inputs + one "
            "block's recompute transient; per run in the JSON (`memory_estimate_gb`). The "
            "runs went in the order above, after an untimed warm-up run of each at 2 layers "
            "(kernel compilation / selection); what start-up cost is left falls on the first "
            "(DPO), so the ratio is an upper bound.",
        ]
    if "goals_met" in doc:
        lines += [
            "",
            f"LoRA-DPO / LoRA-SFT step: {doc['lora_dpo_over_lora_sft']}x. "
            f"Goals (DPO <= 1.6x SFT, DPO peak < 80 GB): {doc['goals_met']}",
        ]
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
        "--chunking",
        default=None,
        help="comma list of pair chunkings (joint, per_sample) tried in order after the "
        "recompute settings (default: the case's, see above)",
    )
    ap.add_argument(
        "--no-warm-up-run",
        dest="warm_up_run",
        action="store_false",
        help="skip the untimed small run (2 layers, ~2k tokens) of every run before the "
        "timed ones",
    )
    ap.add_argument(
        "--cpu-init",
        dest="gpu_init",
        action="store_false",
        help="draw the random weights on the CPU (mugv-dit's default; minutes at 10B)",
    )
    ap.add_argument(
        "--no-fused-ops", dest="fused_ops", action="store_false", help="torch ops, not mugv_kernels"
    )
    args = ap.parse_args(argv)
    preset, overrides, shape, args.text_len, recompute, chunking, runs = CASES[args.case]
    defaults = {"10b": (1, 0), "2b8": (10, 4), "tiny": (3, 1)}[args.case]
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
    settings = [
        (c, r)
        for c in (args.chunking or chunking).split(",")
        for r in (args.recompute or recompute).split(",")
    ]

    def prepare(tmp: Path, model, shape) -> Path:
        lat = _dataset(tmp, model.text_dim, shape, args.text_len)
        write_preference_data(
            tmp / "prefs",
            [PreferencePair(chosen="win", rejected="lose")],
            latent_dataset=lat,
            producer="bench",
        )
        if "full_dpo" in runs:
            _write_init(tmp, model)
        return lat

    if args.warm_up_run:
        # the same width at 2 layers and ~2k tokens, one step of every run, not reported:
        # Triton / attention kernels are compiled and selected before the timed runs
        t0 = time.perf_counter()
        small = model_preset(preset, **{"in_channels": shape[0], **overrides, "num_layers": 2})
        wshape = (shape[0], 2, 32, 64)
        wtmp = Path(tempfile.mkdtemp(prefix="mugv-lora-warm-"))
        wlat = prepare(wtmp, small, wshape)
        wargs = argparse.Namespace(**{**vars(args), "steps": 1, "warmup": 0, "tokens": 1024})
        chunk, setting = settings[0]
        for name in runs:
            raw, micro = _configs(wtmp, small, wlat, 1024, wargs, setting, chunk)[name]
            _measure(name, raw, micro, chunk, wtmp / name, wargs, cuda)
        print(f"warm-up runs: {time.perf_counter() - t0:.1f} s", flush=True)
    model = model_preset(preset, **{"in_channels": shape[0], **overrides})
    tmp = Path(tempfile.mkdtemp(prefix="mugv-lora-bench-"))
    lat = prepare(tmp, model, shape)
    tokens = shape[1] * (shape[2] // 2) * (shape[3] // 2)
    args.tokens = tokens
    results = {}
    doc = {}
    for name in runs:
        for i, (chunk, setting) in enumerate(settings):
            raw, micro = _configs(tmp, model, lat, tokens, args, setting, chunk)[name]
            try:
                results[name] = _measure(name, raw, micro, chunk, tmp / f"{name}_{i}", args, cuda)
                break
            except torch.cuda.OutOfMemoryError as e:
                gc.collect()
                torch.cuda.empty_cache()
                results[name] = {
                    "tried": f"{setting}, {chunk}",
                    "error": f"out of memory ({str(e)[:80]})",
                }
                print(f"{name}: out of memory with recompute={setting}, {chunk}", flush=True)
        print(name, results[name], flush=True)
        # after every run: a time limit still leaves the runs done so far on disk
        doc = _report(args, args.case, model, shape, tokens, results, cuda)
    if "goals_met" in doc:
        print(yaml.safe_dump({"goals_met": doc["goals_met"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
