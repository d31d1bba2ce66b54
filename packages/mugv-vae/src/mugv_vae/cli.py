"""Command line of mugv-vae: init, import-original, encode, train, eval, stats."""

from __future__ import annotations

import argparse
import json
import sys

from mugv_formats.console import run_cli
from mugv_formats.outputs import claim_output
from mugv_formats.versioning import VAE_CHECKPOINT_FORMAT

from mugv_vae import __version__


def _claim_checkpoint(args: argparse.Namespace, inputs: list):
    """The checkpoint --output: new, or a VAE checkpoint replaced only with --overwrite."""
    return claim_output(
        args.output, VAE_CHECKPOINT_FORMAT, overwrite=args.overwrite, inputs=inputs, what="--output"
    )


def _cmd_init(args: argparse.Namespace) -> int:
    import torch

    from mugv_vae.config import preset
    from mugv_vae.model import MUGVAE

    claim = _claim_checkpoint(args, [args.sdxl_vae])
    torch.manual_seed(args.seed)
    config = preset(args.preset)
    model = MUGVAE(config)
    if args.sdxl_vae:
        model.trunk.load_autoencoder_kl(args.sdxl_vae)
    extra = {"init": {"preset": args.preset, "seed": args.seed}}
    model.save_pretrained(claim.write_path, extra=extra)
    claim.commit()
    print(json.dumps({"checkpoint": args.output, "preset": args.preset, "seed": args.seed}))
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from mugv_vae.config import preset
    from mugv_vae.import_original import import_original

    claim = _claim_checkpoint(args, [args.input])
    model = import_original(args.input, preset(args.preset))
    model.save_pretrained(claim.write_path, extra={"imported_from": str(args.input)})
    claim.commit()
    print(json.dumps({"checkpoint": args.output, "imported_from": args.input}))
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    from mugv_vae.encode_stage import EncodeConfig, run_encode

    fields = {
        "checkpoint": args.checkpoint,
        "input": args.input,
        "output": args.output,
        "resolutions": args.resolution,
        "frames": args.frames,
        "mode": args.mode,
        "seed": args.seed,
        "dtype": args.dtype,
        "samples_per_shard": args.samples_per_shard,
        "tile": args.tile,
        "keep_parts": args.keep_parts,
        "fast": args.fast,
        "max_activation_bytes": args.max_activation_bytes,
        "overwrite": args.overwrite or None,
    }

    if args.device:
        fields["device"] = args.device
    kwargs = {k: v for k, v in fields.items() if v is not None}
    if args.max_activation_bytes is not None:
        kwargs["frame_batch_size"] = None  # the budget picks the micro-batches
    summary = run_encode(EncodeConfig(**kwargs))
    print(json.dumps(summary))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from mugv_vae.train.config import load_train_config
    from mugv_vae.train.trainer import Trainer

    cfg = load_train_config(args.config, args.overrides)
    result = Trainer(cfg).run()
    print(json.dumps(result))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from mugv_vae.evaluate import EvalConfig, run_eval

    cfg = EvalConfig(
        checkpoint=args.checkpoint,
        clips=args.clips,
        resolution=args.resolution,
        frames=args.frames,
        device=args.device or EvalConfig.model_fields["device"].default,
        lpips_weights=args.lpips_weights,
        output=args.output,
        window=args.window,
    )
    print(run_eval(cfg)["table"])
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from mugv_vae.stats import measure_latent_stats

    result = measure_latent_stats(
        args.checkpoint,
        args.clips,
        resolution=args.resolution,
        frames=args.frames,
        device=args.device,
        max_clips=args.max_clips,
        write=args.write,
    )
    print(json.dumps(result))
    return 0


_OVERWRITE_CKPT = "replace a VAE checkpoint at --output (nothing else is ever replaced)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mugv-vae", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mugv-vae {__version__}")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("init", help="write a randomly initialised checkpoint")
    p.add_argument("--preset", default="tiny", help="architecture preset: tiny or mugv")
    p.add_argument("--output", required=True, help="checkpoint folder to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sdxl-vae", help="local diffusers AutoencoderKL folder for the trunk")
    p.add_argument("--overwrite", action="store_true", help=_OVERWRITE_CKPT)
    p.set_defaults(func=_cmd_init)

    p = sub.add_parser("import-original", help="convert the released MUG-V vae.pt")
    p.add_argument("--input", required=True, help="original vae.pt (plain state dict)")
    p.add_argument("--output", required=True, help="checkpoint folder to write")
    p.add_argument("--preset", default="mugv")
    p.add_argument("--overwrite", action="store_true", help=_OVERWRITE_CKPT)
    p.set_defaults(func=_cmd_import)

    p = sub.add_parser("encode", help="clip shards -> latent shards")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", required=True, help="clip-shard dataset")
    p.add_argument("--output", required=True, help="latent-shard dataset")
    p.add_argument("--resolution", action="append", help="bucket HxW (repeatable); default 256x256")
    p.add_argument("--frames", type=int, help="frames per clip (1+8k), default 33")
    p.add_argument("--mode", choices=["mode", "sample"], help="posterior mean or a sample")
    p.add_argument("--sample", dest="mode", action="store_const", const="sample")
    p.add_argument("--seed", type=int)
    p.add_argument("--device")
    p.add_argument("--dtype", choices=["float32", "bfloat16"])
    p.add_argument("--samples-per-shard", type=int)
    p.add_argument("--tile", type=int, help="spatial tile in pixels (bounded memory)")
    p.add_argument("--keep-parts", action="store_true", default=None)
    p.add_argument(
        "--fast", action="store_true", default=None, help="CUDA fast inference path (same maths)"
    )
    p.add_argument("--max-activation-bytes", type=int, help="activation memory budget")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a complete latent dataset at --output (nothing else is ever replaced), "
        "or start over from parts of an interrupted run with other settings",
    )
    p.set_defaults(func=_cmd_encode)

    p = sub.add_parser("train", help="train from a YAML config")
    p.add_argument("config", help="training config YAML")
    p.add_argument(
        "--set",
        "--override",
        "-o",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set optim.lr=1e-4 (repeatable; --override/-o: "
        "the old spelling)",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="PSNR/SSIM/LPIPS on a clip set")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--clips", required=True, help="clip-shard dataset or folder of videos")
    p.add_argument("--resolution", default="256x256")
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--device")
    p.add_argument("--lpips-weights", help="local LPIPS weights file (skipped when absent)")
    p.add_argument("--output", help="JSON file for the results")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("stats", help="measure per-channel latent mean/std")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--clips", required=True, help="clip-shard dataset or folder of videos")
    p.add_argument("--resolution", default="256x256")
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--max-clips", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--write", action="store_true", help="store the stats into the checkpoint")
    p.set_defaults(func=_cmd_stats)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli("mugv-vae", build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
