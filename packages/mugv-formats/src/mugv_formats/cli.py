"""Command line of mugv-formats: ``mugv-formats inspect PATH``."""

from __future__ import annotations

import argparse
import json

from mugv_formats import __version__
from mugv_formats.console import run_cli
from mugv_formats.inspect import describe
from mugv_formats.versioning import CURRENT_VERSIONS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mugv-formats", description="mugv on-disk format tools")
    parser.add_argument("--version", action="version", version=f"mugv-formats {__version__}")
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("inspect", help="print what a shard, dataset or checkpoint folder holds")
    p.add_argument("path")
    p.add_argument("--verify", action="store_true", help="read every sample and check checksums")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    sub.add_parser("formats", help="list the formats and versions this release writes")
    return parser


def _print_text(d: dict, indent: int = 0) -> None:
    pad = "  " * indent
    for k, v in d.items():
        if isinstance(v, dict) and v:
            print(f"{pad}{k}:")
            _print_text(v, indent + 1)
        else:
            print(f"{pad}{k}: {v}")


def _inspect(args: argparse.Namespace) -> int:
    info = describe(args.path, verify=args.verify)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        _print_text(info)
    return 0


def _formats(args: argparse.Namespace) -> int:
    for name, ver in CURRENT_VERSIONS.items():
        print(f"{name} {ver}")
    return 0


def main(argv: list[str] | None = None) -> int:
    # any OSError reading the inspected path is the user's (a bad path, an unreadable file)
    commands = {"inspect": _inspect, "formats": _formats}
    return run_cli(
        "mugv-formats", build_parser(), argv, commands, name_command=False, also=(OSError,)
    )


if __name__ == "__main__":
    raise SystemExit(main())
