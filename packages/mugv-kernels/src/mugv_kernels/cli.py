"""Command line of mugv-kernels: ``info`` and ``check`` (Triton vs float64 parity)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from mugv_kernels import __version__
from mugv_kernels._dispatch import interpreter_enabled, triton_available

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mugv-kernels", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mugv-kernels {__version__}")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("info", help="print versions, device and which path the ops take")
    check = sub.add_parser(
        "check", help="run the Triton kernels against float64 references (CPU: TRITON_INTERPRET=1)"
    )
    check.add_argument("--size", choices=("tiny", "medium"), default="tiny")
    check.add_argument(
        "--dtype", choices=sorted(_DTYPES), nargs="+", default=["float32", "bfloat16"]
    )
    check.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--json", type=Path, default=None, help="write the results here")
    return parser


def _info() -> int:
    print(f"mugv-kernels {__version__}, torch {torch.__version__}")
    if triton_available():
        import triton

        print(
            f"triton {triton.__version__} (interpreter {'on' if interpreter_enabled() else 'off'})"
        )
    else:
        print("triton not installed: every op runs its PyTorch reference")
    if torch.cuda.is_available():
        print(f"cuda device: {torch.cuda.get_device_name()} -> ops default to Triton")
    else:
        print("no CUDA device -> ops default to the PyTorch reference")
    return 0


def _check(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mugv_kernels._atomic import atomic_write_text
    from mugv_kernels.selfcheck import cases, run_case

    device = torch.device(args.device)
    if device.type == "cpu" and not interpreter_enabled():
        print("check on CPU needs TRITON_INTERPRET=1 in the environment", file=sys.stderr)
        return 2
    todo = cases(args.size, tuple(_DTYPES[d] for d in args.dtype))
    results = []
    for case in tqdm(todo, desc="parity", file=sys.stderr, disable=None):
        results.append(run_case(case, device, seed=args.seed))
    for res in results:
        print(res.line())
    failed = [r.name for r in results if not r.ok]
    print(f"{len(results) - len(failed)}/{len(results)} cases within tolerance")
    if args.json is not None:
        payload = {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "size": args.size,
            "seed": args.seed,
            "results": {
                r.name: {
                    "ok": r.ok,
                    "out_err": r.out_err,
                    "grad_err": r.grad_err,
                    "out_tol": r.out_tol,
                    "grad_tol": r.grad_tol,
                }
                for r in results
            },
        }
        atomic_write_text(args.json, json.dumps(payload, indent=1))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "info":
        return _info()
    if args.command == "check":
        return _check(args)
    parser.print_help()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
