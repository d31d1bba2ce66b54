"""Command line of mugv-infer."""

from __future__ import annotations

import argparse

from mugv_infer import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mugv-infer", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mugv-infer {__version__}")
    parser.add_subparsers(dest="command")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
    return 0
