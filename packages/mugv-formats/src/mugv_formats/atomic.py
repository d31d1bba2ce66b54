"""Atomic output: write under a temporary name in the same directory, then rename.

A crash never leaves a half-written file under its final name; readers therefore treat the
presence of a file as proof that it is complete.

No write follows a symbolic link planted at its target: the atomic writers refuse a target
that is a link (a rename would replace the link, but a reader following it later, or a user
who planted it to redirect our output, must learn that the run folder was tampered with), and
append-only files (logs, metrics) are opened with :func:`open_append_nofollow`
(``O_NOFOLLOW``), so a link cannot send a run's writes outside its folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, BinaryIO


class SymlinkTargetError(ValueError):
    """A write target is a symbolic link (one line naming it and where it points)."""


def refuse_symlink(path: str | Path, what: str = "output") -> None:
    """Raise :class:`SymlinkTargetError` when ``path`` itself is a symbolic link."""
    path = Path(path)
    if path.is_symlink():
        try:
            dest = os.readlink(path)
        except OSError:
            dest = "?"
        raise SymlinkTargetError(
            f"{what} {path} is a symbolic link (to {dest}); refusing to write through it"
        )


def open_append_nofollow(path: str | Path, *, binary: bool = False) -> IO:
    """Open ``path`` for appending (created if missing, mode per umask) without following a
    symbolic link at it: a link there is a :class:`SymlinkTargetError`. Text mode is UTF-8,
    line-buffered, for logs and ``metrics.jsonl``."""
    path = Path(path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as e:
        if path.is_symlink():  # ELOOP (Linux) / EMLINK (BSD) from O_NOFOLLOW
            refuse_symlink(path, "append-only file")
        raise e from None
    if binary:
        return os.fdopen(fd, "ab")
    return os.fdopen(fd, "a", encoding="utf-8", buffering=1)


def umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """Open ``path`` for binary writing; the file appears under its name only on success."""
    path = Path(path)
    refuse_symlink(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600; files follow the umask
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_replace_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``path`` as a whole.

    Used for checkpoint folders: either the old folder or the complete new one exists.
    """
    path = Path(path)
    refuse_symlink(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700; folders follow the umask
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
