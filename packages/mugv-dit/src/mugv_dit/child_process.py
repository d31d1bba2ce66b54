"""Code that runs inside helper processes mugv-dit spawns.

A ``spawn``-started child unpickles its initializer by importing the initializer's module: this
module imports nothing heavy (no torch, no Megatron), so such a child starts in ~0.05 s instead
of the ~4 s it took while the initializer lived in ``mugv_dit.checkpoint`` (2-core CPU machine,
2026-12-03; once per training process, at its first checkpoint).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Initializer of a helper process: SIGKILL when the parent dies (Linux); exit at once if
    the parent already died before the signal was armed."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)
