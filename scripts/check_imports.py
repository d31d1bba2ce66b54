#!/usr/bin/env python3
"""Check the import rules between mugv packages.

Allowed: any -> mugv_formats, any -> mugv_kernels, align -> dit, infer -> vae; nothing else.
mugv-formats imports no other mugv package. The umbrella ``mugv`` (packages/mugv) may import
every stage; no stage imports the umbrella. A package must also declare every sibling it
imports in its own pyproject dependencies. Prints each violation as FILE:LINE and exits 1.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["formats", "kernels", "data", "vae", "dit", "align", "infer"]
ALLOWED: dict[str, set[str]] = {
    "formats": set(),
    "kernels": {"formats"},
    "data": {"formats", "kernels"},
    "vae": {"formats", "kernels"},
    "dit": {"formats", "kernels"},
    "align": {"formats", "kernels", "dit"},
    "infer": {"formats", "kernels", "vae"},
}
#: The umbrella package ``mugv`` (packages/mugv): may import every stage, imported by none.
UMBRELLA = "umbrella"


def imported_mugv_packages(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for n in names:
            m = re.match(r"^mugv_(\w+?)(\.|$)", n)
            if m:
                out.append((node.lineno, m.group(1)))
            elif re.match(r"^mugv(\.|$)", n):
                out.append((node.lineno, UMBRELLA))
    return out


def _package_dir(pkg: str, root: Path) -> Path:
    return root / "packages" / ("mugv" if pkg == UMBRELLA else f"mugv-{pkg}")


def declared_siblings(pkg: str, root: Path = ROOT) -> set[str]:
    data = tomllib.loads((_package_dir(pkg, root) / "pyproject.toml").read_text())
    deps = list(data["project"].get("dependencies", []))
    for extra in data["project"].get("optional-dependencies", {}).values():
        deps += extra
    return {m.group(1) for d in deps if (m := re.match(r"^mugv-(\w+)", d))}


def violations(root: Path = ROOT) -> list[str]:
    problems = []
    umbrella = _package_dir(UMBRELLA, root).is_dir()
    for pkg in [*PACKAGES, UMBRELLA] if umbrella else PACKAGES:
        src = _package_dir(pkg, root) / "src"
        declared = declared_siblings(pkg, root)
        allowed = set(PACKAGES) if pkg == UMBRELLA else ALLOWED[pkg]
        for f in sorted(src.rglob("*.py")):
            for line, target in imported_mugv_packages(f):
                if target == pkg:
                    continue
                rel = f.relative_to(root)
                if target == UMBRELLA:
                    problems.append(f"{rel}:{line}: mugv-{pkg} may not import the umbrella mugv")
                elif target not in PACKAGES:
                    problems.append(f"{rel}:{line}: imports unknown package mugv_{target}")
                elif target not in allowed:
                    problems.append(
                        f"{rel}:{line}: mugv-{pkg} may not import mugv_{target} "
                        f"(allowed: {sorted(allowed) or 'none'})"
                    )
                elif target not in declared:
                    problems.append(
                        f"{rel}:{line}: mugv-{pkg} imports mugv_{target} but does not "
                        f"declare mugv-{target} in its pyproject dependencies"
                    )
    return problems


def main() -> int:
    problems = violations()
    for p in problems:
        print(p)
    print(f"import rules: {len(problems)} violation(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
