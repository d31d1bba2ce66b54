"""What the umbrella may write and remove in a run folder: only what a run of its own wrote.

Three records, all written atomically under ``RUN/.mugv/`` (paths: :class:`mugv.layout.RunLayout`):

- ``run.json`` (the ownership marker): written when ``mugv`` creates the run folder (or finds it
  empty), naming the tool, its version and a run id. A folder that is not empty and has no
  such marker is refused, whatever ``--force`` says: it is not ours.
- ``claims/STAGE.json``: written before a stage touches its outputs, naming the run id and the
  output paths. At that moment every one of them is absent or removable (below), so what
  later appears there was written by the stage's attempt.
- ``done/STAGE.json`` (the reuse marker of :mod:`mugv.runner`) also lists, per output, every
  entry (file, folder, link) the finished stage left there.

A stage path may be removed (a redo: ``--force``, a changed setting, a missing output) only if

- the stage finished in this run folder and every entry now under the path is one it listed
  (a file a user added, or a link put in place of the stage's folder, makes it refuse), or
- the stage's attempt was interrupted: its claim names the path, and no finished listing does.

Anything else at a stage path is refused with one line naming the path; nothing is removed
(checked for every output of the stage before the first removal). Paths are recorded relative
to the run folder, so a copied run folder keeps working.

Writes inside the run folder never go through a planted symbolic link: the folders the umbrella
writes into are made component by component and a link among them is refused
(:func:`real_dirs`); files are written by mugv-formats' writers, which refuse a link at the
target (atomic writes; logs through ``open_append_nofollow``).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
from datetime import UTC, datetime
from pathlib import Path

from mugv_formats import atomic_write_text
from mugv_formats.outputs import LOCK_FILE

from mugv import __version__
from mugv.layout import RunLayout

RUN_FOLDER_FORMAT = "mugv-run-folder"
"""``format`` of ``RUN/.mugv/run.json``."""

IGNORED_IN_NEW_FOLDER = frozenset({LOCK_FILE})
"""Names that do not make a run folder "not empty" (the advisory lock file of the run)."""


class RunFolderError(ValueError):
    """A run folder, or a path in it, that the umbrella refuses to use (a user error)."""


def _rel(layout: RunLayout, path: Path) -> str:
    """``path`` relative to the run folder where it lies inside it, else absolute."""
    try:
        return path.relative_to(layout.root).as_posix()
    except ValueError:
        return str(path)


def _read_json(path: Path) -> dict | None:
    try:
        if path.is_symlink():
            return None
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def real_dirs(layout: RunLayout, folder: Path) -> Path:
    """Make ``folder`` (inside the run folder) and every folder between it and the run folder,
    refusing a symbolic link or a file among them: a write there stays in the run folder."""
    try:
        rel = folder.relative_to(layout.root)
    except ValueError:  # outside the run folder (tests' stages): not ours to police
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    here = layout.root
    for part in rel.parts:
        here = here / part
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            os.mkdir(here)
            continue
        if stat.S_ISLNK(st.st_mode):
            raise RunFolderError(
                f"{here} is a symbolic link; mugv writes in its run folder only through real "
                "folders (remove the link)"
            )
        if not stat.S_ISDIR(st.st_mode):
            raise RunFolderError(f"{here} is a file where mugv needs a folder (move it away)")
    return folder


def claim_run_folder(layout: RunLayout) -> str:
    """Make sure ``layout.root`` is a run folder of ours, creating it (and its ownership
    marker) when it is missing or empty; returns its run id. Raises :class:`RunFolderError`
    for a file, a folder that is not writable, or a non-empty folder without our marker."""
    root = layout.root
    if root.exists() and not root.is_dir():
        raise RunFolderError(f"run folder {root} is a file, not a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a dangling link, or a file among its parents
        raise RunFolderError(
            f"run folder {root} cannot be made: a file or link is in the way"
        ) from None
    except NotADirectoryError:
        raise RunFolderError(f"run folder {root} cannot be made: a parent is a file") from None
    except OSError as e:
        raise RunFolderError(f"run folder {root} cannot be made: {e.strerror}") from None
    st = os.stat(root)
    if not os.access(root, os.W_OK | os.X_OK) or not st.st_mode & 0o222:
        raise RunFolderError(
            f"run folder {root} is read-only (mode {stat.S_IMODE(st.st_mode):04o}); "
            "give a writable --run-dir"
        )
    marker = read_owner(layout)
    if marker is not None:
        return marker["run_id"]
    if layout.owner.is_symlink() or layout.owner.parent.is_symlink():
        raise RunFolderError(f"{layout.owner} is a symbolic link; this is not a mugv run folder")
    others = sorted(set(os.listdir(root)) - IGNORED_IN_NEW_FOLDER)
    if others:
        raise RunFolderError(
            f"run folder {root} is not empty and was not created by mugv (no "
            f"{_rel(layout, layout.owner)}; it holds {others[0]!r}): give a new or empty "
            "--run-dir; mugv never writes into or removes from a folder it did not create"
        )
    run_id = uuid.uuid4().hex
    real_dirs(layout, layout.owner.parent)
    atomic_write_text(
        layout.owner,
        json.dumps(
            {
                "format": RUN_FOLDER_FORMAT,
                "tool": "mugv",
                "version": __version__,
                "run_id": run_id,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
            },
            indent=2,
        ),
    )
    return run_id


def read_owner(layout: RunLayout) -> dict | None:
    """The run folder's ownership marker, or None where it is missing or not ours."""
    data = _read_json(layout.owner)
    if data is None or data.get("format") != RUN_FOLDER_FORMAT:
        return None
    return data if isinstance(data.get("run_id"), str) and data["run_id"] else None


def listing(path: Path) -> dict[str, str]:
    """Every entry at and under ``path`` (links not followed): ``{relative: kind}`` with kind
    ``dir``, ``file``, ``link`` or ``other``; empty where nothing is at ``path``."""

    def kind(p: Path) -> str:
        m = os.lstat(p).st_mode
        if stat.S_ISLNK(m):
            return "link"
        return "dir" if stat.S_ISDIR(m) else "file" if stat.S_ISREG(m) else "other"

    if not os.path.lexists(path):
        return {}
    top = kind(path)
    out = {".": top}
    if top == "dir":
        for here, dirs, files in os.walk(path, followlinks=False):
            for name in [*dirs, *files]:
                p = Path(here) / name
                out[p.relative_to(path).as_posix()] = kind(p)
    return out


def stage_listing(layout: RunLayout, paths: list[Path]) -> dict[str, dict[str, str]]:
    """What a finished stage left at each of its paths (for its done marker)."""
    return {_rel(layout, p): listing(p) for p in paths}


def check_removable(
    layout: RunLayout, stage: str, paths: list[Path], run_id: str, done: dict | None
) -> list[Path]:
    """The paths among ``paths`` that exist and may be removed before ``stage`` runs again;
    raises :class:`RunFolderError` (naming the path) where any of them is not ours."""
    finished = done.get("files") if done and done.get("run_id") == run_id else None
    claim = _read_json(layout.claim(stage))
    claimed = (
        set(claim.get("outputs", []))
        if claim and claim.get("run_id") == run_id and claim.get("stage") == stage
        else set()
    )
    out = []
    for p in paths:
        if not os.path.lexists(p):
            continue
        rel = _rel(layout, p)
        if isinstance(finished, dict) and rel in finished:
            wrote = finished[rel] if isinstance(finished[rel], dict) else {}
            unknown = [k for k, v in listing(p).items() if wrote.get(k) != v]
            if unknown:
                what = p if unknown[0] == "." else p / unknown[0]
                raise RunFolderError(
                    f"stage {stage}: {what} was not written by this run; mugv removes only "
                    f"what it wrote: move it out of {p} and run again"
                )
        elif rel not in claimed:
            raise RunFolderError(
                f"stage {stage}: {p} is in the way and was not written by this run; mugv "
                "removes only what it wrote: move it out of the run folder and run again"
            )
        out.append(p)
    return out


def write_claim(layout: RunLayout, stage: str, paths: list[Path], run_id: str) -> None:
    """Record, before a stage touches them, that its attempt owns ``paths``."""
    real_dirs(layout, layout.claim(stage).parent)
    atomic_write_text(
        layout.claim(stage),
        json.dumps(
            {"run_id": run_id, "stage": stage, "outputs": [_rel(layout, p) for p in paths]},
            indent=2,
        ),
    )


def remove(path: Path) -> None:
    """Remove a path :func:`check_removable` allowed (a link itself, never its target)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()
