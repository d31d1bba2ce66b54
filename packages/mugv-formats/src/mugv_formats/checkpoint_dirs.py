"""One naming of training-checkpoint folders across the trainers: ``step_0000100`` (7 digits).

mugv-vae wrote ``step-0000100`` before; :func:`checkpoint_step` still reads it. No torch here.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["checkpoint_step", "prune_step_dirs", "step_dir_name", "step_dirs"]

_NAME = re.compile(r"step([_-])(\d+)\Z")


def step_dir_name(step: int) -> str:
    """``step_0000100``: the folder name of the checkpoint at ``step``."""
    if step < 0:
        raise ValueError(f"checkpoint step {step} is negative")
    return f"step_{step:07d}"


def checkpoint_step(name: str) -> int | None:
    """The step of a checkpoint folder name (``step_0000100``, or mugv-vae's older
    ``step-0000100``), None for any other name."""
    m = _NAME.match(name)
    return int(m.group(2)) if m else None


def step_dirs(root: str | Path, complete: Callable[[Path], bool] | None = None) -> list[Path]:
    """Checkpoint folders under ``root``, oldest step first (only those ``complete`` accepts)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [
        (step, p)
        for p in root.iterdir()
        if (step := checkpoint_step(p.name)) is not None
        and p.is_dir()
        and (complete is None or complete(p))
    ]
    return [p for _, p in sorted(found, key=lambda sp: (sp[0], sp[1].name))]


def prune_step_dirs(
    root: str | Path,
    keep: int,
    protect: Iterable[str] = (),
    complete: Callable[[Path], bool] | None = None,
) -> list[Path]:
    """Remove all but the newest ``keep`` checkpoint folders (``keep`` <= 0: remove none),
    never one named in ``protect`` (e.g. what ``latest`` points to). Each folder is first
    renamed out of the step namespace (atomic), so a crash mid-delete never leaves a partial
    folder that looks like a checkpoint. Returns the removed folders."""
    if keep <= 0:
        return []
    protected = set(protect)
    removed = []
    for path in step_dirs(root, complete)[:-keep]:
        if path.name in protected:
            continue
        trash = path.with_name(f".deleting-{path.name}-{os.getpid()}")
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
        removed.append(path)
    return removed
