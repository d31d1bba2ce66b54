"""Command line of mugv-infer: ``generate`` and ``enhance``.

User errors (missing or mismatched parts, bad sizes, unreadable images, bad settings) print
one line naming the thing and exit with status 2, before any model is loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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

    gen = sub.add_parser("generate", help="text/image-to-video generation")
    common(gen)
    gen.add_argument("--image", type=Path, help="first-frame image (I2V / TI2V)")
    gen.add_argument("--last-image", type=Path)
    gen.add_argument("--video", type=Path, help="clip to continue")
    gen.add_argument("--frames", help="1 + 8k frames, or 5s / 3s")
    gen.add_argument("--output-type", choices=["video", "latent"])
    enh = sub.add_parser("enhance", help="one-step SDEdit refinement of a video")
    common(enh)
    enh.add_argument("--video", type=Path, required=False)
    enh.add_argument("--lora", type=Path, help="peft LoRA folder of the enhancer")
    enh.add_argument("--strength", type=float)
    return parser


_FLAG_KEYS = {
    "model": "model",
    "vae": "vae",
    "text_encoder": "text_encoder",
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "resolution": "resolution",
    "aspect_ratio": "aspect_ratio",
    "steps": "steps",
    "guidance_scale": "guidance_scale",
    "seed": "seed",
    "out": "out",
    "image": "image",
    "last_image": "last_image",
    "video": "video",
    "frames": "frames",
    "output_type": "output_type",
    "lora": "lora",
    "strength": "strength",
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from pydantic import ValidationError

    from mugv_infer import config as C
    from mugv_infer import run

    flags = {key: getattr(args, attr, None) for attr, key in _FLAG_KEYS.items()}
    if isinstance(flags.get("frames"), str) and flags["frames"].isdigit():
        flags["frames"] = int(flags["frames"])
    kind = C.GenerateConfig if args.command == "generate" else C.EnhanceConfig
    try:
        cfg = C.resolve(kind, args.config, flags, args.set)
        plan = run.check(cfg)  # every user error surfaces here, before any model loads
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        print(f"mugv-infer: error: setting {where}: {first['msg']}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:
        print(f"mugv-infer: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    outputs = run.generate(cfg, plan) if args.command == "generate" else run.enhance(cfg, plan)
    print(json.dumps({"outputs": [str(p) for p in outputs]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
