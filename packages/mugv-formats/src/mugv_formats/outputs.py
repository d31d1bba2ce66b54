"""The rule of every writer's output folder, and one lock per output.

:func:`claim_output` decides, before any work, whether a command may write at ``path``:

=====================================================  =======================================
what is at ``path``                                    outcome
=====================================================  =======================================
nothing, or an empty folder                            ``new``: written in place
a complete artifact of the same ``kind`` (its header   refused; with ``overwrite=True``
file, written last, exists and names ``kind``)         ``replace``: written to a temporary
                                                       sibling, swapped in by :meth:`commit`
an interrupted artifact of ours of the same ``kind``   ``resume`` (same ``settings``); other
(our ownership marker, no header)                      settings: refused, or ``replace`` with
                                                       ``overwrite=True``
anything else: a run folder of another kind, a user's  refused, whatever ``overwrite`` says
folder, a file, a symbolic link, another kind
=====================================================  =======================================

and, whatever is there, ``path`` equal to an input, inside one, or holding one is refused
(compared on resolved real paths). Every refusal is a one-line :class:`OutputError` naming the
path and what is there.

The kind of a complete artifact is read by :func:`artifact_kind` from the header each format
writes last: ``dataset.json`` (clip shards, latent shards, preference data) or ``config.json``
(VAE checkpoints, DiT exports) with a ``format`` field. Folders that are not such artifacts
(training run folders) are recognised by the ownership marker :data:`MARKER` that
:func:`claim_output` writes into every folder it creates: ``{"kind", "settings", ...}``.

:func:`output_lock` is an advisory ``flock`` on ``PARENT/.NAME.mugv-lock`` (beside the output
folder, removed on release) held for a run; a second run on the same output is refused naming
the holder (pid, host, command, start time). The kernel drops the lock when its process dies,
so a dead run's lock is simply taken over. Being beside the folder, the lock never writes into
a folder that is not ours, and it still covers the folder after a replacement is swapped in.

No torch or pydantic here: any package may import it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mugv_formats.atomic import atomic_write_text, refuse_symlink

__all__ = [
    "HEADER_FILES",
    "LOCK_FILE",
    "MARKER",
    "OutputClaim",
    "OutputError",
    "OutputLockedError",
    "artifact_kind",
    "check_not_nested",
    "claim_output",
    "lock_path",
    "marker_kind",
    "output_lock",
]

#: The header files, each written last by its writer: present and parseable = complete.
HEADER_FILES = ("dataset.json", "config.json")
#: Ownership marker written by :func:`claim_output` into each output folder it creates.
MARKER = ".mugv-output.json"
#: Name of the lock-information file of :func:`output_lock` inside a folder of ours (the lock
#: itself is ``.NAME`` + this, beside the folder).
LOCK_FILE = ".mugv-lock"
_OWN_FILES = {MARKER, LOCK_FILE}
_NEW_SUFFIX = ".mugv-new"


class OutputError(ValueError):
    """An output path a writer must not write to (one line: the path and what is there)."""


class OutputLockedError(OutputError):
    """Another live run holds the output's lock."""


def _read_json_object(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(1 << 24))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def artifact_kind(path: str | Path) -> str | None:
    """The ``format`` of the complete mugv artifact at ``path``, else None.

    Complete means the header its writer writes last (``dataset.json`` for datasets,
    ``config.json`` for weights folders) exists, is a JSON object and names a string
    ``format`` starting with ``mugv.``."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return None
    for name in HEADER_FILES:
        head = path / name
        if head.is_file() and not head.is_symlink():
            data = _read_json_object(head)
            fmt = data.get("format") if data else None
            if isinstance(fmt, str) and fmt.startswith("mugv."):
                return fmt
    return None


def marker_kind(path: str | Path) -> tuple[str, dict[str, Any]] | None:
    """``(kind, settings)`` from the ownership marker of a folder we created, else None."""
    marker = Path(path) / MARKER
    if marker.is_symlink() or not marker.is_file():
        return None
    data = _read_json_object(marker)
    if not data or not isinstance(data.get("kind"), str):
        return None
    settings = data.get("settings")
    return data["kind"], settings if isinstance(settings, dict) else {}


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def check_not_nested(
    output: str | Path, inputs: Iterable[str | Path], what: str = "output"
) -> None:
    """Refuse ``output`` equal to an input, inside one, or holding one (real paths)."""
    out = _real(output)
    for item in inputs:
        if item is None:
            continue
        inp = _real(item)
        if out == inp:
            raise OutputError(f"{what} {output} is the input {item}; choose another {what}")
        if inp in out.parents:
            raise OutputError(f"{what} {output} is inside the input {item}; write it elsewhere")
        if out in inp.parents:
            raise OutputError(f"{what} {output} contains the input {item}; write it elsewhere")


def _describe(path: Path) -> str:
    names = sorted(p.name for p in path.iterdir() if p.name not in _OWN_FILES)
    shown = ", ".join(names[:5]) + (f", ... ({len(names)} entries)" if len(names) > 5 else "")
    return f"holds files that no mugv writer made ({shown})"


def _is_empty(path: Path) -> bool:
    return all(p.name in _OWN_FILES for p in path.iterdir())


def _settings_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(diffs[:4]) + ("; ..." if len(diffs) > 4 else "")


@dataclass
class OutputClaim:
    """The result of :func:`claim_output`.

    ``write_path`` is where the writer writes now: ``path`` itself (``new``, ``resume``) or
    a temporary sibling (``replace``). :meth:`commit` puts a replacement in place (the old
    artifact is renamed away, the new one renamed in, then the old one removed); for ``new``
    and ``resume`` it does nothing. Call it once the artifact's header has been written."""

    path: Path
    write_path: Path
    kind: str
    state: Literal["new", "resume", "replace"]

    def commit(self) -> None:
        if self.state != "replace" or not self.write_path.exists():
            return
        old = self.path.with_name(f".{self.path.name}.mugv-old-{os.getpid()}")
        if self.path.exists():
            os.replace(self.path, old)
        os.replace(self.write_path, self.path)
        shutil.rmtree(old, ignore_errors=True)
        self.write_path = self.path


def _write_marker(folder: Path, kind: str, settings: Mapping[str, Any]) -> None:
    atomic_write_text(
        folder / MARKER,
        json.dumps(
            {
                "kind": kind,
                "settings": dict(settings),
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
            indent=1,
            default=str,
        )
        + "\n",
    )


def _make_folder(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{what} {folder}: a path above it is a file, not a folder") from None
    except PermissionError:
        raise OutputError(f"{what} {folder} cannot be created (permission denied)") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{what} folder {folder} is not writable")


def _fresh_sibling(path: Path, kind: str, settings: Mapping[str, Any], what: str) -> Path:
    """The temporary sibling a replacement is written to; a stale one of ours is removed."""
    tmp = path.with_name(f".{path.name}{_NEW_SUFFIX}")
    if tmp.is_symlink() or tmp.is_file():
        raise OutputError(f"{what} staging path {tmp} exists and is not ours; remove it")
    if tmp.is_dir():
        if marker_kind(tmp) is None and not _is_empty(tmp):
            raise OutputError(f"{what} staging folder {tmp} exists and is not ours; remove it")
        shutil.rmtree(tmp)  # an interrupted replacement of ours
    _make_folder(tmp, what)
    _write_marker(tmp, kind, settings)
    return tmp


def claim_output(
    path: str | Path,
    kind: str,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | Path | None] = (),
    settings: Mapping[str, Any] | None = None,
    what: str = "output",
) -> OutputClaim:
    """Check that a writer of a ``kind`` artifact may write at ``path`` (see the module doc)
    and prepare the folder to write to (created, with our ownership marker).

    ``settings``: what shapes the artifact's contents (a JSON-able mapping); an interrupted
    artifact is resumed only when its marker records the same settings. ``what`` names the
    output in messages (e.g. ``--output``)."""
    path = Path(path).expanduser()
    settings = dict(settings or {})
    check_not_nested(path, inputs, what)
    if path.is_symlink():
        raise OutputError(
            f"{what} {path} is a symbolic link (to {os.readlink(path)}); give the real folder"
        )
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file, not a folder; choose a new {what}")
    if not path.exists() or _is_empty(path):
        _make_folder(path, what)
        _write_marker(path, kind, settings)
        return OutputClaim(path, path, kind, "new")
    found = artifact_kind(path)
    if found is not None:
        if found != kind:
            raise OutputError(
                f"{what} {path} holds a {found} artifact, not a {kind}; refusing to replace "
                f"it (even with --overwrite); choose a new {what}"
            )
        if not overwrite:
            raise OutputError(
                f"{what} {path} already holds a complete {kind}; pass --overwrite to replace "
                f"it, or choose a new {what}"
            )
        return OutputClaim(path, _fresh_sibling(path, kind, settings, what), kind, "replace")
    mark = marker_kind(path)
    if mark is None:
        raise OutputError(
            f"{what} {path} {_describe(path)}; refusing to write there (even with "
            f"--overwrite); choose a new or empty {what}"
        )
    found_kind, old_settings = mark
    if found_kind != kind:
        raise OutputError(
            f"{what} {path} is a {found_kind} folder, not a {kind}; refusing to write there "
            f"(even with --overwrite); choose a new {what}"
        )
    if old_settings != settings:
        if not overwrite:
            raise OutputError(
                f"{what} {path} holds an interrupted {kind} written with other settings "
                f"({_settings_diff(old_settings, settings)}); rerun with the same settings "
                "to resume it, or pass --overwrite to start over"
            )
        return OutputClaim(path, _fresh_sibling(path, kind, settings, what), kind, "replace")
    return OutputClaim(path, path, kind, "resume")


def _holder_of(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 1 << 16, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or not info:
        return "another process"
    return (
        f"pid {info.get('pid')} on {info.get('host')} since {info.get('started')} "
        f"({info.get('command')})"
    )


def lock_path(path: str | Path) -> Path:
    """The lock file of output ``path``: ``PARENT/.NAME.mugv-lock``, beside the folder, so
    that nothing is written inside a folder that is not ours and a replacement swapped in by
    :meth:`OutputClaim.commit` stays under the same lock."""
    path = Path(os.path.abspath(Path(path).expanduser()))
    if not path.name:
        raise OutputError(f"output {path}: the file system root cannot be an output")
    return path.with_name(f".{path.name}{LOCK_FILE}")


def _may_note(path: Path) -> bool:
    """Whether the holder may also be noted in ``PATH/.mugv-lock``: only in an empty folder
    (new) or where that file already is, so no existing folder gains a file by being locked
    (a complete dataset refused by the claim that follows stays byte-for-byte unchanged)."""
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return not names or LOCK_FILE in names


@contextlib.contextmanager
def output_lock(path: str | Path, what: str = "output") -> Iterator[Path]:
    """Hold an advisory lock on the output folder ``path`` (created if missing) while the
    block runs; a second holder is refused with :class:`OutputLockedError` naming the first.
    Yields the lock file's path (:func:`lock_path`, beside the folder; removed on release).

    Nothing is added inside an existing folder (a user's folder, or a dataset the claim then
    refuses, stays byte-for-byte unchanged); in a new (empty) folder, or one that already has
    ``PATH/.mugv-lock``, the holder is also noted there for people looking inside."""
    path = Path(path).expanduser()
    if path.is_symlink():
        raise OutputError(f"{what} {path} is a symbolic link (to {os.readlink(path)})")
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file, not a folder")
    lock = lock_path(path)
    if not path.exists():
        _make_folder(path, what)
    fd = _acquire(lock, path, what)
    try:
        info = (
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "command": " ".join(sys.argv)[:500],
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "output": str(path),
                }
            )
            + "\n"
        ).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, info, 0)
        inner = path / LOCK_FILE
        if _may_note(path):
            with contextlib.suppress(OSError):  # information only: the lock is beside
                atomic_write_text(inner, info.decode())
        try:
            yield lock
        finally:
            if inner.is_file() and not inner.is_symlink():
                with contextlib.suppress(OSError):
                    os.truncate(inner, 0)
            with contextlib.suppress(OSError):
                os.unlink(lock)  # while still holding it: see _acquire
    finally:
        os.close(fd)  # releases the flock


def _acquire(lock: Path, path: Path, what: str) -> int:
    """Open and ``flock`` ``lock``; the file may be removed by a holder releasing it, so the
    lock counts only if the path still names the locked file (else try again)."""
    for _ in range(100):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666)
        except OSError as e:
            if lock.is_symlink():
                refuse_symlink(lock, "lock file")
            raise OutputError(
                f"{what} {path}: cannot open its lock file {lock} ({e.strerror})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_of(fd)
            os.close(fd)
            raise OutputLockedError(
                f"{what} {path} is in use by another run ({holder}); wait for it to "
                f"finish or choose another {what}"
            ) from None
        except OSError:
            os.close(fd)
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.lstat(lock))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # released and removed meanwhile: take the new one
    raise OutputError(f"{what} {path}: could not take its lock {lock}")
