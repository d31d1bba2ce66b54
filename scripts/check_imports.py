#!/usr/bin/env python3
"""Check the import rules between mugv packages.

Allowed: any -> mugv_formats, any -> mugv_kernels, align -> dit, infer -> vae; nothing else.
mugv-formats imports no other mugv package. The umbrella ``mugv`` (packages/mugv) may import
every stage; no stage imports the umbrella. A package must also declare every sibling it
imports in its own pyproject dependencies. Further:

- mugv-infer never imports Megatron (``megatron``): inference runs without megatron-core;
- mugv-formats' source has no module-level ``torch`` import (the contract installs without
  torch; import it inside the function that needs it).

Scanned: each package's ``src/``, ``tests/`` and ``benchmarks/``. Imports are ``import``,
``from ... import`` (at any depth, inside functions too) and ``importlib.import_module("...")``
/ ``__import__("...")`` with a literal name; a name computed from a ``"mugv"`` prefix
(``import_module(f"mugv_{x}")``) is itself a violation, as it cannot be checked. A test or
benchmark may import its own package's helper modules (files of its ``tests/`` / ``benchmarks/`` folder, e.g. ``mugv_dit_fixtures``);
importing another package's helpers follows the rules above. Exceptions are listed in
``ALLOWED_EXCEPTIONS`` with a reason. Prints each violation as FILE:LINE and exits 1.
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
#: The folders of a package that are scanned.
SCANNED = ("src", "tests", "benchmarks")
#: Outside modules a package may not import at all: {package: {top-level module: reason}}.
FORBIDDEN: dict[str, dict[str, str]] = {
    "infer": {"megatron": "mugv-infer runs without Megatron-Core (pure PyTorch inference)"},
}
#: (file path relative to the repository root, imported package) pairs that are allowed
#: despite the rules, each with its reason. Keep this list short.
ALLOWED_EXCEPTIONS: dict[tuple[str, str], str] = {}


def imported_modules(path: Path) -> list[tuple[int, str, bool]]:
    """Every absolute import in ``path``: ``(line, dotted name, at module level)``.

    Module level includes module-level ``if`` / ``try`` / ``with`` blocks, except under
    ``if TYPE_CHECKING:``; imports in functions and classes are not module level.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[tuple[int, str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            child_top = top and not isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
            )
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                child_top = False
            if isinstance(child, ast.Import):
                out.extend((child.lineno, a.name, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                out.append((child.lineno, child.module, top))
            elif isinstance(child, ast.Call) and (name := _dynamic_import(child)):
                out.append((child.lineno, name, top))
            visit(child, child_top)

    visit(tree, True)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


#: Stands for a module name computed from a ``"mugv..."`` prefix (``f"mugv_{x}"``, ``"mugv_" + x``).
COMPUTED = "<computed mugv name>"


def _dynamic_import(call: ast.Call) -> str | None:
    """The literal module name of ``importlib.import_module("x")``, ``import_module("x")`` or
    ``__import__("x")``; ``COMPUTED`` for a name built from a ``"mugv"`` prefix; None for
    other calls, relative names and other computed names."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in ("import_module", "__import__") or not call.args:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return None if arg.value.startswith(".") else arg.value
    head = arg.values[0] if isinstance(arg, ast.JoinedStr) and arg.values else None
    if isinstance(arg, ast.BinOp) and isinstance(arg.op, ast.Add):
        head = arg.left
    if isinstance(head, ast.Constant) and str(head.value).startswith("mugv"):
        return COMPUTED
    return None


def _mugv_target(name: str, helpers: dict[str, set[str]], importer: str | None) -> str | None:
    """The mugv package that module ``name`` belongs to when imported from package
    ``importer`` (None: not a mugv module). A helper module of the importer's own tests/ or
    benchmarks/ is the importer's; a ``mugv_*`` helper of another package is that package's."""
    top = name.split(".")[0]
    owners = helpers.get(top, set())
    if importer in owners:
        return importer
    if top.startswith("mugv") and owners:
        return sorted(owners)[0]
    m = re.match(r"^mugv_(\w+)$", top)
    if m:
        return m.group(1)
    return UMBRELLA if top == "mugv" else None


def imported_mugv_packages(
    path: Path, helpers: dict[str, set[str]] | None = None, importer: str | None = None
) -> list[tuple[int, str]]:
    """``(line, package)`` of every mugv package that ``path`` imports."""
    out = []
    for line, name, _ in imported_modules(path):
        target = _mugv_target(name, helpers or {}, importer)
        if target is not None:
            out.append((line, target))
    return out


def _package_dir(pkg: str, root: Path) -> Path:
    return root / "packages" / ("mugv" if pkg == UMBRELLA else f"mugv-{pkg}")


def declared_siblings(pkg: str, root: Path = ROOT) -> set[str]:
    data = tomllib.loads((_package_dir(pkg, root) / "pyproject.toml").read_text())
    deps = list(data["project"].get("dependencies", []))
    for extra in data["project"].get("optional-dependencies", {}).values():
        deps += extra
    return {m.group(1) for d in deps if (m := re.match(r"^mugv-(\w+)", d))}


def helper_modules(root: Path = ROOT) -> dict[str, set[str]]:
    """Modules in the packages' tests/ and benchmarks/ folders: {module: {package, ...}}."""
    helpers: dict[str, set[str]] = {}
    for pkg in [*PACKAGES, UMBRELLA]:
        for sub in ("tests", "benchmarks"):
            folder = _package_dir(pkg, root) / sub
            if not folder.is_dir():
                continue
            for f in folder.iterdir():
                if f.suffix == ".py" and f.stem != "__init__":
                    helpers.setdefault(f.stem, set()).add(pkg)
                elif (f / "__init__.py").is_file():
                    helpers.setdefault(f.name, set()).add(pkg)
    return helpers


def _scanned_files(pkg: str, root: Path) -> list[Path]:
    base = _package_dir(pkg, root)
    return [f for sub in SCANNED for f in sorted((base / sub).rglob("*.py"))]


def violations(root: Path = ROOT) -> list[str]:
    problems = []
    umbrella = _package_dir(UMBRELLA, root).is_dir()
    helpers = helper_modules(root)
    for pkg in [*PACKAGES, UMBRELLA] if umbrella else PACKAGES:
        declared = declared_siblings(pkg, root)
        allowed = set(PACKAGES) if pkg == UMBRELLA else ALLOWED[pkg]
        src = _package_dir(pkg, root) / "src"
        for f in _scanned_files(pkg, root):
            rel = f.relative_to(root)
            for line, name, top in imported_modules(f):
                if name == COMPUTED:
                    problems.append(
                        f"{rel}:{line}: computes the name of a mugv module to import; "
                        "the import rules cannot check it (import the module by name)"
                    )
                    continue
                outside = name.split(".")[0]
                if outside in FORBIDDEN.get(pkg, {}):
                    problems.append(
                        f"{rel}:{line}: mugv-{pkg} may not import {outside} "
                        f"({FORBIDDEN[pkg][outside]})"
                    )
                if pkg == "formats" and outside == "torch" and top and f.is_relative_to(src):
                    problems.append(
                        f"{rel}:{line}: mugv-formats imports torch at module level "
                        "(import it inside the function that needs it)"
                    )
                target = _mugv_target(name, helpers, pkg)
                if target is None or target == pkg:
                    continue
                if (rel.as_posix(), target) in ALLOWED_EXCEPTIONS:
                    continue
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
