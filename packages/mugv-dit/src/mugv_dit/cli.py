"""Command line of mugv-dit.

    mugv-dit train CONFIG.yaml [--set key.path=value ...] [--max-steps N]
    mugv-dit export --run RUN_DIR --output DIR [--weights ema|model] [--merge-lora]
    mugv-dit export-lora --run RUN_DIR --output ADAPTER_DIR [--weights ema|model]
    mugv-dit embed-text --input LATENTS --output LATENTS_WITH_TEXT --text-encoder PATH|tiny-random
    mugv-dit import-original --weights dit.pt --output DIR [--preset 10b]
    mugv-dit widen --input EXPORT --output WIDE_EXPORT [--noise 1e-3]
    mugv-dit presets

``train`` runs under torchrun for several processes (TP/DP from the config and world size);
without torchrun it runs as one process. Heavy imports happen inside the subcommands.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from mugv_formats.console import run_cli

from mugv_dit import __version__


def add_train_args(parser: argparse.ArgumentParser, *, set_example: str) -> None:
    """The arguments of a training command (mugv-dit ``train``, mugv-align ``sft``/``dpo``/
    ``kto``): CONFIG, ``--set`` overrides, ``--max-steps``, ``--micro-batches``."""
    parser.add_argument("config", help="run config YAML")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config field, e.g. --set {set_example} (repeatable)",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="stop after this many steps of this invocation (the run resumes later)",
    )
    parser.add_argument(
        "--micro-batches",
        type=int,
        default=None,
        help="global micro-batches per step (default: DP size); a multiple of DP",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mugv-dit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"mugv-dit {__version__}")
    sub = parser.add_subparsers(dest="command")

    train = sub.add_parser("train", help="pre-train a DiT on latent shards")
    add_train_args(train, set_example="train.seed=3")

    export = sub.add_parser("export", help="export a training checkpoint to mugv.dit-export")
    export.add_argument("--run", required=True, help="run output directory (has checkpoints/)")
    export.add_argument("--output", required=True, help="export folder to write")
    export.add_argument("--weights", choices=["ema", "model"], default="ema")
    export.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    export.add_argument(
        "--merge-lora",
        action="store_true",
        help="a LoRA run: fold its adapters into the weights (W + alpha/r B A)",
    )
    export.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a complete export already at --output (nothing else is ever replaced)",
    )

    lora = sub.add_parser("export-lora", help="a LoRA run's adapters -> peft adapter folder")
    lora.add_argument("--run", required=True, help="run output directory (has checkpoints/)")
    lora.add_argument("--output", required=True, help="adapter folder to write")
    lora.add_argument("--weights", choices=["ema", "model"], default="ema")
    lora.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    lora.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a complete adapter folder already at --output (nothing else is replaced)",
    )

    embed = sub.add_parser("embed-text", help="add T5 text features to a latent dataset")
    embed.add_argument("--input", required=True, help="latent dataset without (or with) text")
    embed.add_argument("--output", required=True, help="new latent dataset to write")
    embed.add_argument(
        "--text-encoder",
        required=True,
        help="local path of a transformers T5 encoder, or 'tiny-random' (tests / demos)",
    )
    embed.add_argument("--max-length", type=int, default=300)
    embed.add_argument("--batch-size", type=int, default=8)
    embed.add_argument("--device", default="auto")
    embed.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a complete latent dataset already at --output (nothing else)",
    )

    orig = sub.add_parser(
        "import-original", help="convert the released MUG-V dit.pt into a mugv.dit-export"
    )
    orig.add_argument("--weights", required=True, help="path of the release's dit.pt")
    orig.add_argument("--output", required=True, help="export folder to write")
    orig.add_argument("--preset", default="10b", help="model preset of the weights")
    orig.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a complete export already at --output (nothing else is ever replaced)",
    )

    widen = sub.add_parser("widen", help="widen an export x2, function-preservingly")
    widen.add_argument("--input", required=True, help="mugv.dit-export folder")
    widen.add_argument("--output", required=True, help="wide export folder to write")
    widen.add_argument("--noise", type=float, default=1e-3, help="relative symmetry-breaking noise")
    widen.add_argument("--seed", type=int, default=0)
    widen.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a complete export already at --output (nothing else is ever replaced)",
    )

    sub.add_parser("presets", help="list model presets with parameter counts")
    return parser


def _train(args) -> int:
    from mugv_dit.config import load_config
    from mugv_dit.trainer import Trainer, train_to_end

    cfg = load_config(args.config, args.overrides)
    logs = train_to_end(Trainer(cfg, micro_batches_per_step=args.micro_batches), args.max_steps)
    done = [log for log in logs if "loss" in log]
    if done:
        print(
            f"trained {len(logs)} steps; last loss {done[-1]['loss']:.6f}; outputs in {cfg.output_dir}"
        )
    return 0


def _export(args) -> int:
    from mugv_dit.interop.export import export_run

    path = export_run(
        args.run,
        args.output,
        weights=args.weights,
        step=args.step,
        overwrite=args.overwrite,
        merge_lora=args.merge_lora,
    )
    merged = " (LoRA adapters merged)" if args.merge_lora else ""
    print(f"exported {args.weights} weights{merged} to {path}")
    return 0


def _export_lora(args) -> int:
    from mugv_dit.interop.export import export_run_lora

    path = export_run_lora(
        args.run, args.output, weights=args.weights, step=args.step, overwrite=args.overwrite
    )
    print(f"wrote the {args.weights} LoRA adapters as a peft folder to {path}")
    return 0


def _embed(args) -> int:
    from mugv_dit.text import embed_text_dataset

    n = embed_text_dataset(
        args.input,
        args.output,
        args.text_encoder,
        max_length=args.max_length,
        batch_size=args.batch_size,
        device=args.device,
        overwrite=args.overwrite,
    )
    print(f"wrote {n} samples with text features to {args.output}")
    return 0


def _import_original(args) -> int:
    import torch

    from mugv_dit.config import model_preset
    from mugv_dit.interop.export import claim_export, save_export
    from mugv_dit.interop.original import load_original_checkpoint

    claim = claim_export(args.output, overwrite=args.overwrite, inputs=[args.weights])
    cfg = model_preset(args.preset)
    state = load_original_checkpoint(args.weights, cfg)
    # the release has no learned null caption: start from a small random one
    gen = torch.Generator().manual_seed(0)
    state["y_embedder.null_caption"] = (
        torch.randn(cfg.null_text_tokens, cfg.text_dim, generator=gen) / cfg.text_dim**0.5
    ).to(next(iter(state.values())).dtype)
    path = save_export(args.output, cfg, state, {"source": "MUG-V release dit.pt"}, claim=claim)
    print(f"wrote {path} ({args.preset})")
    return 0


def _widen(args) -> int:
    from mugv_dit.interop.expansion import widen_state_dict, widened_config
    from mugv_dit.interop.export import claim_export, load_export, save_export

    claim = claim_export(args.output, overwrite=args.overwrite, inputs=[args.input])
    cfg, state = load_export(args.input)
    wide = widen_state_dict(state, noise=args.noise, seed=args.seed)
    path = save_export(
        args.output,
        widened_config(cfg),
        wide,
        {"widened_from": str(args.input), "noise": args.noise},
        claim=claim,
    )
    print(f"wrote {path} (hidden {cfg.hidden_size} -> {2 * cfg.hidden_size})")
    return 0


def _presets() -> int:
    from mugv_dit.config import MODEL_PRESETS, model_preset

    for name in MODEL_PRESETS:
        cfg = model_preset(name)
        per_block = 16 * cfg.hidden_size**2 + 2 * cfg.hidden_size * (
            cfg.ffn_size - 4 * cfg.hidden_size
        )
        print(
            f"{name:6s} hidden={cfg.hidden_size:5d} layers={cfg.num_layers:3d} heads={cfg.num_heads:3d}"
            f" head_dim={cfg.head_dim:3d} ffn={cfg.ffn_size:6d} ~{per_block * cfg.num_layers / 1e9:.2f}B"
        )
    return 0


def quiet_megatron_warnings() -> None:
    """Silence the warnings Megatron-Core gives on import about optional Apex / TE fallbacks we
    do not use (every mugv-dit / mugv-align command calls this first)."""
    for message in ("Transformer Engine and Apex", "full scope is deprecated", "tp_group is None"):
        warnings.filterwarnings("ignore", message=f".*{message}.*")
    warnings.filterwarnings("ignore", category=FutureWarning, module="megatron")


COMMANDS = {
    "train": _train,
    "export": _export,
    "export-lora": _export_lora,
    "embed-text": _embed,
    "import-original": _import_original,
    "widen": _widen,
    "presets": lambda _args: _presets(),
}


def main(argv: list[str] | None = None) -> int:
    quiet_megatron_warnings()
    return run_cli("mugv-dit", build_parser(), argv, COMMANDS)


if __name__ == "__main__":
    sys.exit(main())
