"""Command line of mugv-infer: ``generate``, ``enhance``, ``convert`` (parts -> a diffusers
folder) and ``ui`` (a browser page over such a folder).

User errors (missing or mismatched parts, bad sizes, unreadable images, bad settings) print
one line, ``mugv-infer COMMAND: error: ...`` naming the thing, and exit with status 2; they are
found before any model is loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mugv_formats.console import run_cli

from mugv_infer import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mugv-infer", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mugv-infer {__version__}")
    sub = parser.add_subparsers(dest="command")

    def common(p):
        p.add_argument("--config", type=Path, help="YAML settings file")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a setting (repeatable), e.g. runtime.dtype=float32")  # fmt: skip
        p.add_argument("--model", type=Path, help="DiT export folder")
        p.add_argument("--vae", type=Path, help="VAE checkpoint folder")
        p.add_argument("--text-encoder", type=Path, help="local T5 folder")
        p.add_argument("--prompt", action="append", help="prompt (repeatable)")
        p.add_argument("--negative-prompt")
        p.add_argument("--resolution", help="720p or HEIGHTxWIDTH")
        p.add_argument("--aspect-ratio")
        p.add_argument("--steps", type=int)
        p.add_argument("--guidance-scale", type=float)
        p.add_argument("--seed", type=int)
        p.add_argument("--out", type=Path, help=".mp4, .gif, or a folder")
        p.add_argument("--overwrite", action="store_true", default=None,
                       help="replace an output that mugv-infer wrote (never anything else)")  # fmt: skip
        p.add_argument("--low-memory", action="store_true", default=None,
                       help="the 24 GB recipe: fp8 DiT, T5/DiT/VAE offloaded in turn, tiled VAE")  # fmt: skip
        p.add_argument("--quantization", choices=["none", "fp8"],
                       help="fp8: the DiT's block linears in float8 e4m3")  # fmt: skip

    gen = sub.add_parser("generate", help="text/image-to-video generation")
    common(gen)
    gen.add_argument("--preset", choices=["mugv", "release"],
                     help="release: the MUG-V release's choices (decode, latent, numerics, crop, fps)")  # fmt: skip
    gen.add_argument("--image", type=Path, help="first-frame image (I2V / TI2V)")
    gen.add_argument("--last-image", type=Path)
    gen.add_argument("--video", type=Path, help="clip to continue")
    gen.add_argument("--frames", help="1 + 8k frames, or 5s / 3s")
    gen.add_argument("--output-type", choices=["video", "latent"])
    gen.add_argument("--append", action="store_true", default=None,
                     help="latent output: add to an existing dataset with the same latent header")  # fmt: skip
    gen.add_argument("--rewrite-prompt", action="store_true", default=None,
                     help="expand each prompt into the release's caption style first")  # fmt: skip
    gen.add_argument("--rewriter", type=Path, help="local instruction-tuned LLM folder")
    gen.add_argument("--lora", action="append", metavar="PATH[:WEIGHT]",
                     help="peft LoRA folder of the DiT, fused with WEIGHT (default 1); repeatable")  # fmt: skip
    gen.add_argument("--enhance", type=Path, metavar="PATH",
                     help="then refine with the release's Wan-based enhancer (its files' folder)")  # fmt: skip
    gen.add_argument("--enhance-wan", type=Path, metavar="PATH",
                     help="the Wan2.1-T2V-1.3B folder of the enhancer (default: beside PATH)")  # fmt: skip
    cal = sub.add_parser(
        "calibrate-cache", help="choose the step-cache threshold from a speed/deviation curve"
    )
    common(cal)
    cal.add_argument("--frames", help="1 + 8k frames, or 5s / 3s")
    cal.add_argument("--thresholds", help="candidate thresholds, comma-separated")
    cal.add_argument("--max-rel-l2", type=float, help="allowed final-latent deviation")
    cal8 = sub.add_parser(
        "calibrate-fp8", help="choose the DiT layers that run in float8 for a final-latent budget"
    )
    common(cal8)
    cal8.add_argument("--frames", help="1 + 8k frames, or 5s / 3s")
    cal8.add_argument("--max-rel-l2", type=float, help="allowed final-latent deviation (0.03)")
    enh = sub.add_parser("enhance", help="one-step SDEdit refinement of a video")
    common(enh)
    enh.add_argument("--video", type=Path, required=False)
    enh.add_argument("--lora", action="append", metavar="PATH[:WEIGHT]",
                     help="peft LoRA folder of the enhancer, with WEIGHT (default 1); repeatable")  # fmt: skip
    enh.add_argument("--strength", type=float)

    conv = sub.add_parser(
        "convert", help="DiT + VAE + T5 -> one diffusers folder with a model card"
    )
    conv.add_argument("--dit", type=Path, required=True,
                      help="mugv.dit-export folder, or the release's dit.pt (needs mugv-dit)")  # fmt: skip
    conv.add_argument("--vae", type=Path, required=True,
                      help="mugv.vae-checkpoint folder, or the release's vae.pt")  # fmt: skip
    conv.add_argument("--text-encoder", type=Path, help="local T5 folder (tokenizer + encoder)")
    conv.add_argument("--out", type=Path, required=True, help="folder to write")
    conv.add_argument("--dit-preset", default="10b", help="size of a dit.pt (debug ... 10b)")
    conv.add_argument("--vae-preset", default="mugv", help="architecture of a vae.pt")
    conv.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                      help="dtype of the saved weights")  # fmt: skip
    conv.add_argument("--variant", help="save as *.VARIANT.safetensors (diffusers' variant)")
    conv.add_argument("--overwrite", action="store_true",
                      help="replace a pipeline folder that mugv-infer wrote (never anything else)")  # fmt: skip

    ui = sub.add_parser("ui", help="browser page for generation from a diffusers folder (gradio)")
    ui.add_argument("--model", type=Path, required=True, help="folder written by convert")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=7860)
    ui.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    ui.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                    help="default: bfloat16 on CUDA, float32 on the CPU")  # fmt: skip
    ui.add_argument("--outputs", type=Path, help="folder for the generated videos (default: a temporary one)")  # fmt: skip
    return parser


def _convert(args: argparse.Namespace) -> int:
    import torch

    from mugv_infer.convert import convert

    out = convert(
        args.dit, args.vae, args.text_encoder, args.out,
        dit_preset=args.dit_preset, vae_preset=args.vae_preset,
        torch_dtype=getattr(torch, args.dtype), variant=args.variant, overwrite=args.overwrite,
    )  # fmt: skip
    print(json.dumps({"folder": str(out)}))
    return 0


def _ui(args: argparse.Namespace) -> int:
    from mugv_infer.ui import serve

    serve(args.model, host=args.host, port=args.port, device=args.device, dtype=args.dtype,
          outputs=args.outputs)  # fmt: skip
    return 0


_FLAGS = (
    "preset",
    "model",
    "vae",
    "text_encoder",
    "prompt",
    "negative_prompt",
    "resolution",
    "aspect_ratio",
    "steps",
    "guidance_scale",
    "seed",
    "out",
    "image",
    "last_image",
    "video",
    "frames",
    "output_type",
    "lora",
    "strength",
    "overwrite",
    "append",
    "rewrite_prompt",
    "rewriter",
    "max_rel_l2",
)
"""Flags that set the config field of the same name (a flag a command lacks stays None)."""
_RUNTIME_FLAGS = ("low_memory", "quantization")
"""Flags that set ``runtime.<name>``."""
_ENHANCE_FLAGS = (("path", "enhance"), ("wan", "enhance_wan"))
"""(``enhance.<name>``, flag) pairs."""


def _flags(args: argparse.Namespace) -> dict:
    flags = {key: getattr(args, key, None) for key in _FLAGS}
    flags.update({f"runtime.{key}": getattr(args, key, None) for key in _RUNTIME_FLAGS})
    flags.update({f"enhance.{key}": getattr(args, arg, None) for key, arg in _ENHANCE_FLAGS})
    if isinstance(flags.get("frames"), str) and flags["frames"].isdigit():
        flags["frames"] = int(flags["frames"])
    thresholds = getattr(args, "thresholds", None)
    if thresholds is not None:
        flags["thresholds"] = [v.strip() for v in thresholds.split(",") if v.strip()]
    return flags


def _run(args: argparse.Namespace) -> int:
    """``generate`` / ``enhance``: settings resolved and checked (every user error surfaces
    before any model loads), then run; prints the outputs as JSON."""
    from mugv_infer import config as C

    flags = _flags(args)
    generate = args.command == "generate"
    cfg = C.resolve(C.GenerateConfig if generate else C.EnhanceConfig, args.config, flags, args.set)
    from mugv_infer import run  # diffusers and the pipelines: after the settings' errors

    plan = run.check(cfg)  # a folder output is locked from here (mugv_formats.output_lock)
    try:
        outputs = run.generate(cfg, plan) if generate else run.enhance(cfg, plan)
    finally:
        if plan.outputs is not None:
            plan.outputs.release()
    print(json.dumps({"outputs": [str(p) for p in outputs]}))
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    """``calibrate-cache``: settings resolved and checked, the curve measured and written."""
    from mugv_infer import config as C
    from mugv_infer.calibrate_command import CalibrateCacheConfig, run_calibration

    cfg = C.resolve(CalibrateCacheConfig, args.config, _flags(args), args.set)
    out = run_calibration(cfg)
    print(
        json.dumps({"outputs": [str(out)], "threshold": json.loads(out.read_text())["threshold"]})
    )
    return 0


def _calibrate_fp8(args: argparse.Namespace) -> int:
    """``calibrate-fp8``: settings resolved and checked, the float8 layers chosen and written."""
    from mugv_infer import config as C
    from mugv_infer.calibrate_fp8_command import CalibrateFp8Config, run_fp8_calibration

    cfg = C.resolve(CalibrateFp8Config, args.config, _flags(args), args.set)
    out = run_fp8_calibration(cfg)
    data = json.loads(out.read_text())
    print(json.dumps({"outputs": [str(out)], "fp8_layers": data["fp8_layers"],
                      "final_latent_rel_l2": data["final_latent_rel_l2"], "met": data["met"]}))  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    handlers = {"generate": _run, "enhance": _run, "calibrate-cache": _calibrate,
                "calibrate-fp8": _calibrate_fp8, "convert": _convert, "ui": _ui}  # fmt: skip
    return run_cli("mugv-infer", build_parser(), argv, handlers)


if __name__ == "__main__":
    sys.exit(main())
