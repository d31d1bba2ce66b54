"""Input discovery: turn files, directories, globs and list files into a sorted list of videos."""

from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path


def _has_magic(s: str) -> bool:
    return any(c in s for c in "*?[")


def discover_inputs(specs: list[str], extensions: list[str]) -> list[Path]:
    """Resolve input specs into unique absolute file paths, sorted.

    A spec is a file (always taken, whatever its extension: bad files are rejected later
    with a reason), a directory (searched recursively for ``extensions``), a glob pattern, or
    ``@LIST`` / a ``.txt``/``.lst`` file listing one spec per line (``#`` comments allowed;
    relative entries resolve against the list file's folder).
    """
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    found: dict[str, Path] = {}

    def add(p: Path) -> None:
        rp = resolve_path(p)
        found.setdefault(str(rp), rp)

    def visit(spec: str, base: Path | None, depth: int) -> None:
        if depth > 8:
            raise ValueError(f"input list nesting too deep at {spec!r}")
        is_list = spec.startswith("@")
        raw = spec[1:] if is_list else spec
        p = Path(raw).expanduser()
        if base is not None and not p.is_absolute():
            p = base / p
        if is_list or (p.is_file() and p.suffix.lower() in {".txt", ".lst"}):
            if not p.is_file():
                raise ValueError(f"input list file {p} does not exist")
            for line in p.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    visit(line, p.parent, depth + 1)
            return
        if p.is_dir():
            # anything named like a video is taken, a folder or symlink loop too: it becomes
            # a reject record with its reason instead of vanishing silently
            for f in sorted(p.rglob("*")):
                if f.suffix.lower() in exts and not _inside_taken_dir(f, p, exts):
                    add(f)
            return
        if p.is_file() or p.is_symlink():  # a dangling link or loop is one reject later
            add(p)
            return
        if _has_magic(str(p)):
            matches = sorted(glob.glob(str(p), recursive=True))
            if not matches:
                raise ValueError(f"input glob {spec!r} matched no file")
            for m in matches:
                mp = Path(m)
                if mp.is_file():
                    add(mp)
                elif mp.is_dir():
                    visit(str(mp), None, depth + 1)
            return
        raise ValueError(f"input {spec!r} is not a file, directory, glob or list file")

    for spec in specs:
        visit(spec, None, 0)
    return sorted(found.values(), key=str)


def _inside_taken_dir(f: Path, root: Path, exts: set[str]) -> bool:
    """Whether ``f`` lies in a folder named like a video below ``root`` (taken whole)."""
    return any(
        parent.suffix.lower() in exts for parent in f.relative_to(root).parents if parent.name
    )


def resolve_path(path: str | Path) -> Path:
    """``Path.resolve`` that survives symlink loops (the absolute, unresolved path then)."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError):  # RuntimeError: symlink loop (Python < 3.13)
        return Path(os.path.abspath(path))


def source_id(path: str | Path) -> str:
    """Stable 12-hex id of a source video (from its absolute path); prefix of its clip keys."""
    return hashlib.sha1(str(resolve_path(path)).encode()).hexdigest()[:12]
