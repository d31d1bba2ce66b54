"""Command line of mugv-data: ``curate``, ``report``, ``inspect``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mugv_formats.console import run_cli

from mugv_data import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mugv-data", description="Video curation -> clip shards.")
    parser.add_argument("--version", action="version", version=f"mugv-data {__version__}")
    sub = parser.add_subparsers(dest="command")

    c = sub.add_parser("curate", help="curate videos into clip shards")
    c.add_argument("config", nargs="?", help="YAML config (optional: defaults otherwise)")
    c.add_argument("--input", nargs="+", default=None, help="files, dirs, globs or @list files")
    c.add_argument("--output", default=None, help="output directory")
    c.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set filters.motion.min=0.5",
    )
    c.add_argument("--engine", choices=["sequential", "process", "ray"], default=None)
    c.add_argument(
        "--ray-address", default=None, help="join this Ray cluster (implies --engine ray)"
    )
    c.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a complete clip dataset at --output (never anything else)",
    )
    c.add_argument("--no-progress", action="store_true")

    r = sub.add_parser("report", help="rebuild report.html of an output directory")
    r.add_argument("output")

    i = sub.add_parser("inspect", help="probe a video, or summarise a curated output directory")
    i.add_argument("path")
    return parser


def cmd_curate(args) -> int:
    from mugv_data.config import load_config
    from mugv_data.curate import curate

    overrides = list(args.overrides)
    if args.engine:
        overrides.append(f"engine.kind={args.engine}")
    if args.ray_address:
        overrides += ["engine.kind=ray", f"engine.ray_address={args.ray_address}"]
    config = load_config(args.config, overrides=overrides, inputs=args.input, output=args.output)
    summary = curate(config, progress=not args.no_progress, overwrite=args.overwrite)
    print(json.dumps(summary.as_dict(), indent=2))
    return 0


def cmd_report(args) -> int:
    from mugv_data.curate import rebuild_report

    print(rebuild_report(args.output))
    return 0


def cmd_inspect(args) -> int:
    p = Path(args.path)
    if not p.exists():
        raise ValueError(f"{p}: no such file or directory")
    if p.is_dir():
        from mugv_data.curate import summarize_output

        print(json.dumps(summarize_output(p), indent=2))
    else:
        from mugv_data.probe import probe_video

        print(json.dumps(probe_video(p).summary(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    commands = {"curate": cmd_curate, "report": cmd_report, "inspect": cmd_inspect}
    # a file-system error (read-only or full disk, a path that is a file), a model pool that
    # cannot be reached (its message says to rerun) and a configured decoder that cannot run
    # here (no FFmpeg for torchcodec, no GPU for decode.device=cuda) are one line, exit 2
    from mugv_data.decode import DecoderUnavailable
    from mugv_data.model_pool import ModelPoolUnavailable

    return run_cli(
        "mugv-data",
        build_parser(),
        argv,
        commands,
        also=(OSError, ModelPoolUnavailable, DecoderUnavailable),
    )


if __name__ == "__main__":
    sys.exit(main())
