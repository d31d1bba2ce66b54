"""Command line of mugv-formats: ``mugv-formats inspect PATH``."""

from __future__ import annotations

import argparse
import json
import sys

from mugv_formats import __version__
from mugv_formats.errors import FormatError


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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "inspect":
        from mugv_formats.inspect import describe

        try:
            info = describe(args.path, verify=args.verify)
        except (FormatError, ValueError, OSError) as e:  # user errors: one line, exit 2
            print(f"mugv-formats: error: {e}", file=sys.stderr)
            return 2
        if args.json:
            print(json.dumps(info, indent=2, default=str))
        else:
            _print_text(info)
        return 0
    if args.command == "formats":
        from mugv_formats.versioning import CURRENT_VERSIONS

        for name, ver in CURRENT_VERSIONS.items():
            print(f"{name} {ver}")
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
