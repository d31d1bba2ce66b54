#!/usr/bin/env python3
"""Build every package's wheel without workspace sources and install each ALONE in a fresh
virtual environment, as CI does before publishing one package.

For each package: ``uv build --package NAME --no-sources``; a new venv; ``uv pip install`` of
that wheel only (sibling mugv packages it declares come from the freshly built wheels in
``--find-links``, everything else from the package index); then ``import mugv_NAME`` and
``mugv-NAME --help`` must succeed (for the umbrella ``mugv``: every stage wheel from
``--find-links``, ``import mugv``, ``mugv --help``). An undeclared import of a sibling or
third-party package fails here. Usage: ``uv run python scripts/release_check.py [NAME ...] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALL = ["formats", "kernels", "data", "vae", "dit", "align", "infer", "mugv"]
#: "mugv" is the umbrella (distribution, module and command ``mugv``); the others are the stage
#: packages ``mugv-NAME`` / ``mugv_NAME``.
#: Extras that cannot install on a CPU machine (flash-attn builds against CUDA).
SKIP_EXTRAS = {"flash"}
#: Optional modules whose absence a submodule may report at import time.
OPTIONAL_MODULES = {"flash_attn"}

IMPORT_ALL = """
import importlib, pkgutil, sys
pkg = importlib.import_module(sys.argv[1])
optional = set(sys.argv[2].split(","))
failed = []
for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
    try:
        importlib.import_module(m.name)
    except ImportError as e:
        if (e.name or "").split(".")[0] not in optional:
            failed.append(f"{m.name}: {e!r}")
if failed:
    sys.exit("\\n".join(failed))
print(pkg.__version__)
"""


def dist_name(name: str) -> str:
    return "mugv" if name == "mugv" else f"mugv-{name}"


def module_name(name: str) -> str:
    return dist_name(name).replace("-", "_")


def extras_of(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    return [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Provides-Extra:")]


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        raise RuntimeError(
            f"command failed ({res.returncode}): {' '.join(cmd)}\n{res.stdout}\n{res.stderr}"
        )
    return res


def uv() -> list[str]:
    exe = shutil.which("uv")
    return [exe] if exe else [sys.executable, "-m", "uv"]


def check(names: list[str], out: Path) -> list[tuple[str, float]]:
    out.mkdir(parents=True, exist_ok=True)
    for name in ALL:  # siblings must be available as wheels for --find-links
        run(
            [
                *uv(),
                "build",
                "--package",
                dist_name(name),
                "--no-sources",
                "--wheel",
                "--out-dir",
                str(out),
            ],
            cwd=ROOT,
        )
    results = []
    for name in names:
        t0 = time.time()
        wheel = sorted(out.glob(f"{module_name(name)}-*.whl"))[-1]
        with tempfile.TemporaryDirectory(prefix=f"release-{name}-") as tmp:
            venv = Path(tmp) / "venv"
            run([*uv(), "venv", "-q", "--python", sys.executable, str(venv)])
            py = venv / "bin" / "python"
            extras = [e for e in extras_of(wheel) if e not in SKIP_EXTRAS]
            spec = (
                f"{dist_name(name)}[{','.join(extras)}] @ {wheel.resolve().as_uri()}"
                if extras
                else str(wheel)
            )
            run(
                [*uv(), "pip", "install", "-q", "--python", str(py), "--find-links", str(out), spec]
            )
            run([str(py), "-c", IMPORT_ALL, module_name(name), ",".join(sorted(OPTIONAL_MODULES))])
            run([str(venv / "bin" / dist_name(name)), "--help"])
        results.append((name, time.time() - t0))
        print(
            f"{dist_name(name)}: wheel {wheel.name} installs alone, every module imports ({results[-1][1]:.1f}s)",
            flush=True,
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"packages to check (default: all of {ALL})")
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(ALL))
    if unknown:
        parser.error(f"unknown package(s) {unknown}; choose from {ALL}")
    check(args.names or ALL, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
