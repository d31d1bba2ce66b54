"""Command line of mugv-align.

    mugv-align sft CONFIG.yaml [--set key.path=value ...] [--max-steps N] [--micro-batches M]
    mugv-align dpo CONFIG.yaml [...]            Flow-DPO on pairs (align.preference)
    mugv-align kto CONFIG.yaml [...]            Flow-KTO on pass/fail labels
    mugv-align precompute-ref CONFIG.yaml --output ERRORS.json
    mugv-align export --run RUN --output EXPORT [--step N] [--merge-lora]   raw policy weights
    mugv-align export-lora --run RUN --output ADAPTER_DIR [--step N]        peft adapter folder
    mugv-align ema-list --run RUN
    mugv-align ema-reconstruct --run RUN --sigma-rel 0.07 [--step N] --output EXPORT
    mugv-align ema-sweep --run RUN --data HELD_OUT_LATENTS [--sigma-rels 0.03,0.05,...]
    mugv-align make-prefs --latents LATENTS --labels LABELS.csv|jsonl --output PREFS
    mugv-align make-pairs --real LATENTS --generated GEN_LATENTS --output DIR

Training commands run under torchrun for several processes (TP/CP/DP from the config and
the world size); without torchrun as one process. User errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mugv_dit.cli import add_train_args, quiet_megatron_warnings
from mugv_formats.console import run_cli

from mugv_align import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mugv-align", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"mugv-align {__version__}")
    sub = parser.add_subparsers(dest="command")
    add_train_args(
        sub.add_parser("sft", help="supervised fine-tuning (annealed LR, power EMAs)"),
        set_example="align.beta=1000",
    )
    add_train_args(
        sub.add_parser("dpo", help="Flow-DPO on preference pairs"), set_example="align.beta=1000"
    )
    add_train_args(
        sub.add_parser("kto", help="Flow-KTO on pass/fail labels"), set_example="align.beta=1000"
    )
    pre = sub.add_parser("precompute-ref", help="store the reference model's errors")
    pre.add_argument("config")
    pre.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    pre.add_argument("--output", required=True, help="JSON file to write")
    pre.add_argument("--device", default=None)

    exp = sub.add_parser("export", help="a run checkpoint's raw weights -> mugv.dit-export")
    exp.add_argument("--run", required=True, help="mugv-align run folder")
    exp.add_argument("--output", required=True, help="export folder to write")
    exp.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    exp.add_argument(
        "--merge-lora",
        action="store_true",
        help="a LoRA run: fold its adapters into the weights (W + alpha/r B A)",
    )
    exp.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a complete export already at --output (nothing else is ever replaced)",
    )

    lora = sub.add_parser("export-lora", help="a LoRA run's raw adapters -> peft adapter folder")
    lora.add_argument("--run", required=True, help="mugv-align run folder")
    lora.add_argument("--output", required=True, help="adapter folder to write")
    lora.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    lora.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a complete adapter folder already at --output (nothing else is replaced)",
    )

    lst = sub.add_parser("ema-list", help="list a run's EMA snapshots")
    lst.add_argument("--run", required=True)
    rec = sub.add_parser("ema-reconstruct", help="post-hoc EMA of any sigma_rel -> export")
    rec.add_argument("--run", required=True, help="mugv-align run folder")
    rec.add_argument("--sigma-rel", type=float, required=True)
    rec.add_argument("--step", type=int, default=None, help="EMA at this step (default: last)")
    rec.add_argument("--output", required=True, help="mugv.dit-export folder to write")
    rec.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a complete export already at --output (nothing else is ever replaced)",
    )
    sweep = sub.add_parser("ema-sweep", help="evaluate candidate sigma_rel on held-out latents")
    sweep.add_argument("--run", required=True)
    sweep.add_argument("--data", required=True, help="held-out latent dataset (with text)")
    sweep.add_argument(
        "--sigma-rels", default="0.02,0.04,0.05,0.07,0.10,0.15", help="comma-separated candidates"
    )
    sweep.add_argument("--step", type=int, default=None)
    sweep.add_argument("--draws", type=int, default=2, help="noise draws per sample")
    sweep.add_argument("--seed", type=int, default=0)
    sweep.add_argument("--output", default=None, help="JSON results (default RUN/ema_sweep.json)")

    mp = sub.add_parser("make-prefs", help="preference data from labels (CSV / JSONL)")
    mp.add_argument("--latents", required=True)
    mp.add_argument("--labels", required=True)
    mp.add_argument("--output", required=True)
    mp.add_argument(
        "--kind",
        choices=["dpo", "kto"],
        default=None,
        help="default: dpo when rows have 'chosen', else kto",
    )
    mode = mp.add_mutually_exclusive_group()
    mode.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a complete preference set already at --output (nothing else)",
    )
    mode.add_argument(
        "--append",
        action="store_true",
        help="add the items to the preference set at --output (same kind, same latents)",
    )
    pairs = sub.add_parser("make-pairs", help="RDPO pairs: real clips vs generated samples")
    pairs.add_argument("--real", required=True, help="latent dataset of real clips (with text)")
    pairs.add_argument("--generated", required=True, help="latent shards written by mugv-infer")
    pairs.add_argument("--output", required=True, help="folder: latents/ + prefs/")
    pairs.add_argument("--max-per-caption", type=int, default=1)
    pairs.add_argument(
        "--overwrite",
        action="store_true",
        help="replace complete latents/ and prefs/ of an earlier make-pairs at --output",
    )
    return parser


def _train(args) -> int:
    from mugv_dit.trainer import train_to_end

    from mugv_align.config import load_align_config
    from mugv_align.trainer import AlignTrainer

    cfg = load_align_config(args.config, [*args.overrides, f"align.mode={args.command}"])
    trainer = AlignTrainer(cfg, micro_batches_per_step=args.micro_batches)
    logs = train_to_end(trainer, args.max_steps)
    done = [log for log in logs if "loss" in log]
    if done:
        last = done[-1]
        extra = "".join(
            f"; {k} {last[k]:.4f}" for k in ("pref_accuracy", "reward_margin") if k in last
        )
        print(
            f"trained {len(logs)} steps; last loss {last['loss']:.6f}{extra}; "
            f"outputs in {cfg.output_dir}"
        )
    return 0


def _run_config(run: str):
    import yaml

    from mugv_align.config import resolve_align_config

    path = Path(run) / "resolved_config.yaml"
    if not path.is_file():
        raise ValueError(f"{run} is not a mugv-align run (no resolved_config.yaml)")
    return resolve_align_config(yaml.safe_load(path.read_text()))


def _reconstruct(run: str, sigma_rel: float, step: int | None, cfg):
    """The post-hoc EMA of ``sigma_rel``; a LoRA run's (``cfg.lora``) averaged adapters
    folded into its base (adapter-only snapshots: the run's ``train.init_from`` export)."""
    from mugv_align.snapshots import list_snapshots, reconstruction_weights, weighted_average

    snaps = list_snapshots(Path(run) / "ema_snapshots")
    if step is not None:
        snaps = [s for s in snaps if s["step"] <= step]
        if not snaps:
            raise ValueError(f"{run}: no EMA snapshot at or before step {step}")
    weights = reconstruction_weights(snaps, sigma_rel, step)
    state = weighted_average(snaps, weights)
    kinds = {(s["adapters_only"], s["base_dtype"]) for s in snaps}
    if len(kinds) > 1:
        raise ValueError(
            f"{run}/ema_snapshots mixes whole-model and adapter-only snapshots "
            f"({sorted(kinds)}): reconstruct from snapshots of one kind (--step)"
        )
    if snaps[0]["adapters_only"]:
        state = {**_run_base(cfg, snaps[0]["base_dtype"], run), **state}
    if cfg.lora is not None:
        from mugv_dit.lora.merge import merge_lora_state

        state = merge_lora_state(state, cfg.lora.scale)
    return state, snaps, weights


def _run_base(cfg, dtype: str, run: str) -> dict:
    """The frozen base of a LoRA run (its ``train.init_from`` export) as the policy held it
    (``dtype``), in fp32: what whole-model snapshots stored besides the adapters."""
    import torch
    from mugv_dit.interop.export import architecture_differences, load_export
    from mugv_dit.lora.names import is_adapter_name

    path = cfg.train.init_from
    if cfg.lora is None or path is None:
        raise ValueError(f"{run}: adapter-only EMA snapshots but no LoRA base (train.init_from)")
    model_cfg, base = load_export(path)
    differences = architecture_differences(model_cfg, cfg.model)
    if differences:
        raise ValueError(f"{run}: its base {path} differs from the run: {', '.join(differences)}")
    cast = getattr(torch, dtype)
    return {k: v.to(cast).float() for k, v in base.items() if not is_adapter_name(k)}


def _export(args) -> int:
    from mugv_dit.interop.export import export_checkpoint, run_checkpoint

    cfg = _run_config(args.run)
    ckpt = run_checkpoint(args.run, args.step)
    extra = {
        "run": str(args.run),
        "checkpoint": ckpt.name,
        "weights": "model",
        "mode": cfg.align.mode,
    }
    path = export_checkpoint(
        ckpt,
        cfg.model,
        args.output,
        weights="model",
        extra=extra,
        overwrite=args.overwrite,
        inputs=[args.run],
        lora=cfg.lora,
        merge_lora=args.merge_lora,
    )
    merged = " (LoRA adapters merged)" if args.merge_lora else ""
    print(f"exported the raw weights of {ckpt.name}{merged} to {path}")
    return 0


def _export_lora(args) -> int:
    from mugv_dit.interop.export import export_lora_adapter, run_checkpoint

    cfg = _run_config(args.run)
    if cfg.lora is None:
        raise ValueError(f"{args.run} trained no LoRA adapters (no lora section)")
    ckpt = run_checkpoint(args.run, args.step)
    path = export_lora_adapter(
        ckpt,
        cfg.model,
        cfg.lora,
        args.output,
        weights="model",
        base_model=cfg.train.init_from,
        overwrite=args.overwrite,
        inputs=[args.run],
    )
    print(f"wrote the raw LoRA adapters of {ckpt.name} as a peft folder to {path}")
    return 0


def _ema_list(args) -> int:
    from mugv_align.snapshots import describe, list_snapshots

    for line in describe(list_snapshots(Path(args.run) / "ema_snapshots")):
        print(line)
    return 0


def _ema_reconstruct(args) -> int:
    from mugv_dit.interop.export import claim_export, save_export

    cfg = _run_config(args.run)  # a run folder first, then the output, then the work
    claim = claim_export(args.output, overwrite=args.overwrite, inputs=[args.run])
    state, snaps, weights = _reconstruct(args.run, args.sigma_rel, args.step, cfg)
    extra = {
        "run": str(args.run),
        "sigma_rel": args.sigma_rel,
        "step": args.step,
        "snapshots": [[s["step"], s["sigma_rel"], float(w)] for s, w in zip(snaps, weights)],
    }
    path = save_export(args.output, cfg.model, state, extra, claim=claim)
    print(f"wrote post-hoc EMA sigma_rel={args.sigma_rel} from {len(snaps)} snapshots to {path}")
    return 0


def _ema_sweep(args) -> int:
    import torch
    from mugv_dit.build import build_model
    from mugv_dit.data.plan import LatentIndex
    from mugv_dit.interop.export import load_full_state_dict
    from mugv_dit.megatron_patches.cuda_on_cpu import cpu_megatron
    from mugv_dit.parallel import init_distributed
    from mugv_formats import atomic_write_text

    from mugv_align.evaluate import validation_loss

    try:
        cands = [float(x) for x in args.sigma_rels.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--sigma-rels {args.sigma_rels!r}: not comma-separated numbers") from None
    cfg = _run_config(args.run)
    index = LatentIndex(args.data)
    init_distributed(1)
    results = []
    with cpu_megatron():
        model = build_model(cfg.model, runtime=cfg.runtime).eval()
        for s in cands:
            state, _, _ = _reconstruct(args.run, s, args.step, cfg)
            load_full_state_dict(model, state)
            with torch.no_grad():
                loss = validation_loss(
                    model, index, cfg.objective, seed=args.seed, draws=args.draws
                )
            results.append({"sigma_rel": s, "val_loss": loss})
            print(f"sigma_rel {s:.4f}  val_loss {loss:.6f}", flush=True)
    best = min(results, key=lambda r: r["val_loss"])
    print(f"best sigma_rel {best['sigma_rel']:.4f} (val_loss {best['val_loss']:.6f})")
    out = Path(args.output) if args.output else Path(args.run) / "ema_sweep.json"
    atomic_write_text(
        out, json.dumps({"data": str(args.data), "results": results, "best": best}, indent=2)
    )
    return 0


def _precompute(args) -> int:
    from mugv_align.config import load_align_config
    from mugv_align.reference import precompute_reference_errors

    cfg = load_align_config(args.config, args.overrides)
    n = precompute_reference_errors(cfg, args.output, device=args.device)
    print(f"wrote reference errors of {n} items to {args.output}")
    return 0


def _make_prefs(args) -> int:
    from mugv_align.prefs import make_prefs

    kind, n = make_prefs(
        args.latents,
        args.labels,
        args.output,
        kind=args.kind,
        overwrite=args.overwrite,
        append=args.append,
    )
    print(f"wrote {n} {kind} items to {args.output}")
    return 0


def _make_pairs(args) -> int:
    from mugv_align.prefs import make_real_pairs

    n = make_real_pairs(
        args.real,
        args.generated,
        args.output,
        max_per_caption=args.max_per_caption,
        overwrite=args.overwrite,
    )
    print(f"wrote {n} real-vs-generated pairs to {args.output}/prefs")
    return 0


COMMANDS = {
    "sft": _train,
    "dpo": _train,
    "kto": _train,
    "precompute-ref": _precompute,
    "export": _export,
    "export-lora": _export_lora,
    "ema-list": _ema_list,
    "ema-reconstruct": _ema_reconstruct,
    "ema-sweep": _ema_sweep,
    "make-prefs": _make_prefs,
    "make-pairs": _make_pairs,
}


def main(argv: list[str] | None = None) -> int:
    quiet_megatron_warnings()
    return run_cli("mugv-align", build_parser(), argv, COMMANDS)


if __name__ == "__main__":
    sys.exit(main())
