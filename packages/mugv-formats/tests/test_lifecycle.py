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


def _assert_dies_with_sigkilled_parent(code: str, *args: str) -> None:
    """Run ``python -c code *args``, which prints a child's pid first; SIGKILL it; the child
    must be gone within 10 s."""
    parent = subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True
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


@pytest.mark.parametrize("mode", ["initializer", "preexec"])
def test_child_dies_when_its_parent_is_sigkilled(mode):
    _assert_dies_with_sigkilled_parent(PARENT, mode)


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


# The program's __main__ logs each import of itself (as __main__ in the parent, as __mp_main__
# in a spawn child that re-imports it), starts a manager one way or the other, uses its queue.
MANAGER_MAIN = textwrap.dedent(
    """
    import os, sys
    with open(os.environ["MAIN_LOG"], "a") as f:
        f.write(f"{__name__} {os.getpid()}\\n")
    if __name__ == "__main__":
        import multiprocessing as mp
        from multiprocessing.managers import SyncManager
        from mugv_formats.lifecycle import start_manager
        spec, path = __spec__, __file__
        if sys.argv[1] == "start_manager":
            manager = start_manager()
        else:  # what start_manager replaces: a plain spawn manager
            manager = SyncManager(ctx=mp.get_context("spawn"))
            manager.start()
        q = manager.Queue()
        q.put("through the server")
        assert __spec__ is spec and __file__ == path, "__main__ not restored"
        print(q.get(), manager._process.pid, flush=True)
        manager.shutdown()
    """
)


@pytest.mark.parametrize("how", ["start_manager", "plain"])
def test_start_managers_server_does_not_import_the_programs_main(tmp_path, how):
    script, log = tmp_path / "trainer_main.py", tmp_path / "imports.log"
    script.write_text(MANAGER_MAIN)
    res = subprocess.run(
        [sys.executable, str(script), how],
        capture_output=True, text=True, timeout=120, env={**os.environ, "MAIN_LOG": str(log)},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    served, server_pid = res.stdout.split()[:-1], int(res.stdout.split()[-1])
    assert " ".join(served) == "through the server"
    imports = [line.split() for line in log.read_text().splitlines()]
    assert imports[0][0] == "__main__"  # the parent itself
    children = [name for name, pid in imports if int(pid) == server_pid]
    if how == "start_manager":
        assert len(imports) == 1 and children == [], imports
    else:  # the control: multiprocessing's spawn re-imports the main script in the server
        assert children == ["__mp_main__"], imports


def test_start_managers_server_dies_with_its_parent():
    code = (
        "import time; from mugv_formats.lifecycle import start_manager;"
        " m = start_manager(); print(m._process.pid, flush=True); time.sleep(300)"
    )
    _assert_dies_with_sigkilled_parent(code)
