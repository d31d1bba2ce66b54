"""A process tree that dies with its root (:class:`TreeReaper`).

A child we start calls :func:`mugv_formats.lifecycle.die_with_parent`; the processes a library
starts (a local Ray cluster) cannot, so a watcher process kills them.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

# -- a process tree that dies with its root ------------------------------------------------
# Processes started by a library, not by us (a local Ray cluster: GCS, raylet and the raylet's
# own agents), cannot call die_with_parent. A small watcher process records the root's process
# tree while the root lives and kills what is left of it when the root dies.


def _stat(pid: int) -> tuple[int, int] | None:
    """``(ppid, start time in clock ticks)`` of a live process, or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[19])


def _tree(root: int, known: dict[int, int]) -> dict[int, int]:
    """Every live process descending from ``root`` or from an already ``known`` process
    (whose parent may have died), as ``{pid: start time}``."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                stats[int(entry)] = st
    inside = {root} | {p for p, t in known.items() if stats.get(p, (0, -1))[1] == t}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _) in stats.items():
            if ppid in inside and pid not in inside:
                inside.add(pid)
                grew = True
    inside.discard(root)
    return {pid: stats[pid][1] for pid in inside}


def _reap(root: int, poll_s: float) -> None:
    """The watcher's loop: runs until the root writes "stop" (its clean stop) or dies."""
    me = os.getpid()
    root_start = (_stat(root) or (0, -1))[1]
    known = {p: t for p, t in _tree(root, {}).items() if p != me}
    # what the root had started before the watcher is not ours to kill (in a long-lived root,
    # e.g. a test session or a notebook, other libraries' helper processes)
    before = dict(known)
    sys.stdout.write("ready\n")  # the root waits for this: what it starts next is watched
    sys.stdout.flush()
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], poll_s)
        if ready:
            data = sys.stdin.buffer.read1(4096)
            if b"stop" in data:
                return  # the root's clean stop: nothing to kill
            if b"kill" in data:
                break  # the root failed to start what it watches: kill what did start
            if not data:
                break  # the pipe closed without "stop": the root died (its state may not
                # read as dead yet for a moment: the kernel closes files before that)
        st = _stat(root)
        if st is None or st[1] != root_start:
            break
        known.update(_tree(root, known))
        known.pop(me, None)
    for _ in range(3):  # what the dying tree spawned meanwhile is found on the next pass
        known = {p: t for p, t in _tree(root, known).items() if p != me}
        targets = {p: t for p, t in known.items() if before.get(p) != t}
        if not targets:
            return
        for pid, start in targets.items():
            st = _stat(pid)
            if st is not None and st[1] == start:  # never a reused pid
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(poll_s)


class TreeReaper:
    """Kills the descendants this process starts after it, when this process dies without
    cleaning up (SIGKILL). Descendants that already ran when it started are left alone.

    Linux only (reads ``/proc``); elsewhere it does nothing. :meth:`stop` ends the watcher
    after a clean shutdown."""

    def __init__(self, *, poll_s: float = 0.5):
        self._proc = None
        if not sys.platform.startswith("linux"):
            return
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "mugv_data.lifecycle", str(os.getpid()), str(poll_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        ready, _, _ = select.select([self._proc.stdout], [], [], 120.0)
        if not ready or self._proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("mugv_data.lifecycle: the process-tree watcher did not start")

    def stop(self) -> None:
        """End the watcher after a clean shutdown: it kills nothing."""
        self._end(b"stop\n")

    def kill_started(self) -> None:
        """Kill, now, the processes the root started since the watcher came up (e.g. what a
        failed ``ray.init`` left running), and end the watcher."""
        self._end(b"kill\n")

    def _end(self, word: bytes) -> None:
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.write(word)
                self._proc.stdin.close()
            self._proc.wait(timeout=30)
            self._proc = None


if __name__ == "__main__":
    _reap(int(sys.argv[1]), float(sys.argv[2]))
