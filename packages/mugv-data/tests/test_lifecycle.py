"""Processes die with the process that started them: TreeReaper (for trees a library starts,
such as a local Ray cluster). die_with_parent is tested in mugv-formats."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from mugv_data_procs import alive, wait_dead

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

DRIVER = textwrap.dedent(
    """
    import subprocess, sys, time
    from mugv_data.lifecycle import TreeReaper
    # a child the driver ran before the reaper (another library's helper process, e.g. a
    # multiprocessing manager in a test session): not the reaper's to kill
    pre = subprocess.Popen(["sleep", "300"])
    reaper = TreeReaper(poll_s=0.1)
    # a child that starts a grandchild outside our session (as Ray's raylet starts its agents):
    # once the driver dies both are re-parented, unreachable by a process-group or session kill
    mid = subprocess.Popen([sys.executable, "-c",
        "import subprocess, sys, time; p = subprocess.Popen(['sleep', '300'], start_new_session=True);"
        " print(p.pid, flush=True); time.sleep(300)"], stdout=subprocess.PIPE, text=True)
    print(pre.pid, mid.pid, mid.stdout.readline().strip(), flush=True)
    if sys.argv[1] == "clean":
        reaper.stop()
        print("stopped", flush=True)
    if sys.argv[1] == "kill_started":
        reaper.kill_started()
        print("killed", flush=True)
    time.sleep(300)
    """
)


def _start(mode: str) -> tuple[subprocess.Popen, list[int]]:
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, mode], stdout=subprocess.PIPE, text=True
    )
    tree = [int(v) for v in driver.stdout.readline().split()]
    time.sleep(1.0)  # the watcher (polling every 0.1 s) has seen the tree
    return driver, tree


def test_tree_reaper_kills_the_tree_of_a_sigkilled_driver():
    driver, (pre, *tree) = _start("kill")
    try:
        assert all(alive(p) for p in (pre, *tree))
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=10)
        assert not wait_dead(tree), "the driver's re-parented tree outlived it"
        assert alive(pre), "a process the driver ran before the reaper was killed"
    finally:
        _kill([pre, *tree])


def test_tree_reaper_kill_started_kills_only_what_came_after_it():
    """A failed ``ray.init`` (e.g. "timed out during startup" on a loaded machine) must not
    leave Ray's processes, nor kill the caller's older children: on 2026-12-07 a reaper left
    unstopped after such a failure killed, when collected, the multiprocessing manager of
    Megatron's checkpoint writer in the same test session."""
    driver, (pre, *tree) = _start("kill_started")
    try:
        assert driver.stdout.readline().strip() == "killed"
        assert not wait_dead(tree)
        assert alive(pre) and driver.poll() is None
    finally:
        driver.kill()
        driver.wait(timeout=10)
        _kill([pre, *tree])


def test_tree_reaper_stop_leaves_the_tree_alone():
    driver, tree = _start("clean")
    try:
        assert driver.stdout.readline().strip() == "stopped"
        driver.send_signal(signal.SIGKILL)  # after a clean stop nothing is watching any more
        driver.wait(timeout=10)
        time.sleep(1.0)
        assert all(alive(p) for p in tree)
    finally:
        _kill(tree)


def _kill(pids: list[int]) -> None:
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
