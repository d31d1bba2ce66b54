"""Child processes die with their parent.

A SIGKILLed parent runs no clean-up, so the processes it started (pool workers, helper
processes, pipeline steps, and through them multiprocessing's resource tracker) would keep
running. Each such child calls :func:`die_with_parent` first: on Linux the kernel sends it
SIGKILL when the parent dies (``prctl(PR_SET_PDEATHSIG)``); elsewhere a daemon thread polls the
parent's pid.

Three ways to use it, one function:

- as a pool or manager initializer: ``initializer=die_with_parent, initargs=(os.getpid(),)``
  (the parent's pid, so a parent that died before the child got here is noticed);
- first thing in a worker function: ``die_with_parent(parent_pid)``;
- as ``subprocess.Popen(..., preexec_fn=die_with_parent)`` (no argument: the parent is the
  process that forked). Between fork and exec it only arms the signal; the polling thread of
  non-Linux systems does not survive ``exec``, so there the child is not watched.

This module imports only the standard library, so a ``spawn``-started child that unpickles it
as its initializer starts fast. :func:`start_manager` starts a multiprocessing manager that way
and keeps its server from importing the program's ``__main__`` (which a ``spawn`` child
otherwise re-imports: a trainer's entry point pulls in torch, seconds of start-up for a process
that only serves queues).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from multiprocessing.managers import SyncManager

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None, *, poll_s: float = 1.0) -> None:
    """Arrange for this process to be killed when its parent exits.

    ``parent_pid``: the pid the parent had when it started this process (default: the current
    parent); if the parent already died before this call (the process was re-parented), exit
    at once. ``poll_s``: the polling period where the kernel cannot send the signal."""
    parent_pid = parent_pid if parent_pid is not None else os.getppid()
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
    if not armed:
        threading.Thread(
            target=_watch_parent, args=(parent_pid, poll_s), daemon=True, name="die-with-parent"
        ).start()


def _watch_parent(parent_pid: int, poll_s: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(poll_s)
    os._exit(1)


def start_manager() -> SyncManager:
    """A started ``SyncManager`` (``spawn`` context) whose server process dies with this one
    (:func:`die_with_parent` as its initializer) and does not import this program's
    ``__main__``: it serves only the standard library's shared objects (queues, dicts)."""
    import multiprocessing as mp

    manager = SyncManager(ctx=mp.get_context("spawn"))
    with _spawn_skips_main():
        manager.start(die_with_parent, (os.getpid(),))
    return manager


_MAIN_KEYS = ("__file__", "__spec__")


@contextlib.contextmanager
def _spawn_skips_main() -> Iterator[None]:
    """Inside, a process started with ``spawn`` runs without the parent's ``__main__``:
    multiprocessing passes the main module to the child by its ``__spec__`` name or its
    ``__file__`` (``spawn.get_preparation_data``), and passes neither while both are hidden.
    Both are restored on the way out."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {k: main.__dict__[k] for k in _MAIN_KEYS if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        for k in _MAIN_KEYS:
            if k in saved:
                main.__dict__[k] = saved[k]
            else:
                main.__dict__.pop(k, None)
