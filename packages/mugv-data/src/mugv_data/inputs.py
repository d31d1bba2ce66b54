"""Input discovery: turn files, directories, globs and list files into a sorted list of videos."""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from mugv_formats import CLIP_SHARDS_FORMAT
from mugv_formats.outputs import marker_kind
from mugv_formats.shards import DATASET_JSON

#: Name of the per-run staging folder inside a curation output (see ``staging.py``); a folder
#: holding it is a curation output of ours, never a source folder.
STAGING = ".staging"


def _has_magic(s: str) -> bool:
    return any(c in s for c in "*?[")


def discover_inputs(
    specs: list[str], extensions: list[str], *, exclude: Iterable[str | Path] = ()
) -> list[Path]:
    """Resolve input specs into unique absolute file paths, sorted.

    A spec is a file (always taken, whatever its extension: bad files are rejected later
    with a reason), a directory (searched recursively for ``extensions``), a glob pattern, or
    ``@LIST`` / a ``.txt``/``.lst`` file listing one spec per line (``#`` comments allowed;
    relative entries resolve against the list file's folder). A list file holding a NUL byte
    lists one spec per NUL-terminated entry instead (``find -print0``), so any file name (a
    newline in it too) can be listed; entries are file-system bytes, UTF-8 or not.

    Never a source: anything whose real path (symlinks resolved) lies in one of ``exclude``
    (the run's own output) or in a curation output or dataset of ours found on the way (a
    folder holding ``.staging/``, a clip-shard output marker or a mugv ``dataset.json``), so
    a run never reads its own staged clips or another run's clips as raw videos.
    """
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    found: dict[str, Path] = {}
    excluded = [resolve_path(e) for e in exclude]
    ours: dict[Path, bool] = {}  # folder -> is_our_output, asked once per folder

    def in_our_output(rp: Path) -> bool:
        for parent in rp.parents:
            if parent not in ours:
                ours[parent] = is_our_output(parent)
            if ours[parent]:
                return True
        return False

    def add(p: Path) -> None:
        rp = resolve_path(p)
        if any(_within(rp, e) for e in excluded) or in_our_output(rp):
            return
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
            for entry in _list_entries(p.read_bytes()):
                visit(entry, p.parent, depth + 1)
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


def _list_entries(data: bytes) -> list[str]:
    """Specs of a list file: NUL-separated entries taken verbatim when the file holds a NUL,
    else stripped lines without blanks and ``#`` comments; bytes decoded as file names."""
    if b"\0" in data:
        return [os.fsdecode(e) for e in data.split(b"\0") if e]
    lines = (line.strip() for line in data.splitlines())
    return [os.fsdecode(line) for line in lines if line and not line.startswith(b"#")]


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def is_our_output(folder: Path) -> bool:
    """Whether ``folder`` is a curation output or a dataset written by mugv: it holds our
    staging folder, the ownership marker of a clip-shard output, or a ``dataset.json`` whose
    ``format`` is a mugv format."""
    if (folder / STAGING).is_dir():
        return True
    mark = marker_kind(folder)
    if mark is not None and mark[0] == CLIP_SHARDS_FORMAT:
        return True
    header = folder / DATASET_JSON
    if not header.is_file():
        return False
    try:
        fmt = json.loads(header.read_bytes()).get("format")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(fmt, str) and fmt.startswith("mugv.")


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
    return hashlib.sha1(os.fsencode(resolve_path(path))).hexdigest()[:12]


def printable(text: str) -> str:
    """``text`` as valid UTF-8 for records, tables and reports: a file name's bytes that are
    not UTF-8 (decoded by Python as lone surrogates) appear as ``\\xNN`` escapes; any other
    character, newlines and tabs included, is kept."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no file name byte gives
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def printable_tree(value):
    """``value`` (JSON-like: dicts, lists, strings, numbers) with every string, keys too,
    made :func:`printable`."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable_tree(k): printable_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable_tree(v) for v in value]
    return value
