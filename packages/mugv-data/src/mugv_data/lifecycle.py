"""Worker processes die with their parent.

A SIGKILLed driver runs no clean-up, so its pool workers (and, through them, multiprocessing's
resource tracker, which lives while any process holds its pipe) would keep running. Each worker
calls :func:`die_with_parent` first: on Linux the kernel sends it SIGKILL when the parent dies
(``prctl(PR_SET_PDEATHSIG)``); elsewhere a daemon thread polls the parent's pid.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None, *, poll_s: float = 1.0) -> None:
    """Arrange for this process to be killed when its parent exits.

    ``parent_pid``: the pid the parent had when it started this process; if the parent already
    died before this call (the process was re-parented), exit at once."""
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
