"""die_with_parent: a child dies with the process that started it, in each of its three uses
(initializer with the parent's pid, first call of a worker, preexec_fn)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# The parent starts one child and prints the child's pid, then waits to be killed.
PARENT = textwrap.dedent(
    """
    import os, subprocess, sys, time
    from mugv_formats.lifecycle import die_with_parent
    if sys.argv[1] == "preexec":
        child = subprocess.Popen(["sleep", "300"], preexec_fn=die_with_parent)
    else:  # the child calls die_with_parent(parent_pid) itself, as a pool initializer does
        child = subprocess.Popen([sys.executable, "-c",
            "import sys, time; from mugv_formats.lifecycle import die_with_parent;"
            " die_with_parent(int(sys.argv[1])); print('armed', flush=True); time.sleep(300)",
            str(os.getpid())], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "armed"
    print(child.pid, flush=True)
    time.sleep(300)
    """
)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize("mode", ["initializer", "preexec"])
def test_child_dies_when_its_parent_is_sigkilled(mode):
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, mode], stdout=subprocess.PIPE, text=True
    )
    child = int(parent.stdout.readline())
    try:
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the child outlived its SIGKILLed parent"
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_a_parent_already_gone_ends_the_child_at_once():
    # the pid passed is not this child's parent: as if the parent died and the child was
    # re-parented before it armed the signal
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os; from mugv_formats.lifecycle import die_with_parent;"
            " die_with_parent(os.getppid() + 10**6); print('survived')",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1 and "survived" not in res.stdout


def test_the_module_imports_nothing_heavy():
    # a spawn-started helper unpickles its initializer by importing this module: it must stay
    # light (no pyarrow, pydantic, numpy)
    code = (
        "import sys, mugv_formats.lifecycle, mugv_formats.console;"
        " print(sorted(m for m in ('pyarrow', 'pydantic', 'numpy', 'torch') if m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
