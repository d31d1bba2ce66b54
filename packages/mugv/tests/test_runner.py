"""Stage reuse, --force, atomic markers and child processes that die with the pipeline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mugv.layout import RunLayout
from mugv.runner import Runner, Stage, StageFailed, Step


def _stages(tmp: Path, settings: dict | None = None) -> list[Stage]:
    """Three stages; each appends its name to calls.txt and writes its output from the last."""
    calls = tmp / "calls.txt"

    def step(name: str, src: str | None):
        def fn():
            with open(calls, "a") as f:
                f.write(name + "\n")
            prev = (tmp / src).read_text() if src else ""
            (tmp / name).write_text(prev + name)

        return fn

    s = settings or {}
    return [
        Stage("a", "A", {"x": s.get("a", 1)}, [tmp / "a"], [Step("a", fn=step("a", None))]),
        Stage("b", "B", {"x": s.get("b", 1)}, [tmp / "b"], [Step("b", fn=step("b", "a"))]),
        Stage("c", "C", {"x": s.get("c", 1)}, [tmp / "c"], [Step("c", fn=step("c", "b"))]),
    ]


def _calls(tmp: Path) -> list[str]:
    p = tmp / "calls.txt"
    out = p.read_text().split() if p.exists() else []
    p.unlink(missing_ok=True)
    return out


def test_reuse_force_and_settings_change(tmp_path, capsys):
    run = Runner(RunLayout(tmp_path / "run"))
    summary = run.run(_stages(tmp_path))
    assert _calls(tmp_path) == ["a", "b", "c"] and (tmp_path / "c").read_text() == "abc"
    assert [s["reused"] for s in summary] == [False, False, False]

    summary = run.run(_stages(tmp_path))
    assert _calls(tmp_path) == [] and [s["reused"] for s in summary] == [True, True, True]
    assert capsys.readouterr().out.count("reused") == 3

    run.run(_stages(tmp_path), force="b")  # b and everything after it
    assert _calls(tmp_path) == ["b", "c"]

    run.run(_stages(tmp_path, {"a": 2}))  # a changed: its key and every later key change
    assert _calls(tmp_path) == ["a", "b", "c"]
    run.run(_stages(tmp_path, {"a": 2, "c": 5}))
    assert _calls(tmp_path) == ["c"]

    (tmp_path / "b").unlink()  # a missing output redoes that stage (and the next: new key)
    run.run(_stages(tmp_path, {"a": 2, "c": 5}))
    assert _calls(tmp_path) == ["b"]  # b's key is unchanged, so c's is too
    marker = json.loads((tmp_path / "run/.mugv/done/b.json").read_text())
    assert marker["stage"] == "b" and len(marker["key"]) == 64
    assert not list((tmp_path / "run/.mugv/done").glob(".*tmp"))  # written atomically

    with pytest.raises(ValueError, match="no such stage"):
        run.run(_stages(tmp_path), force="nope")


def test_failed_stage_leaves_no_marker_and_names_the_log(tmp_path):
    stages = _stages(tmp_path)
    stages[1].steps = [
        Step("boom", cmd=[sys.executable, "-c", "print('bad input x'); raise SystemExit(3)"])
    ]
    run = Runner(RunLayout(tmp_path / "run"))
    with pytest.raises(
        StageFailed, match=r"(?s)stage b: step 'boom' failed \(exit 3\).*bad input x"
    ):
        run.run(stages)
    assert (tmp_path / "run/.mugv/done/a.json").is_file()
    assert not (tmp_path / "run/.mugv/done/b.json").exists()
    assert "bad input x" in (tmp_path / "run/logs/b.log").read_text()


def test_a_failing_glue_step_is_a_stage_failure(tmp_path):
    def boom():
        raise RuntimeError("no checkpoint in vae-train")

    stages = _stages(tmp_path)
    stages[2].steps = [Step("copy", fn=boom)]
    with pytest.raises(StageFailed, match="stage c: step 'copy' failed: no checkpoint"):
        Runner(RunLayout(tmp_path / "run")).run(stages)
    assert not (tmp_path / "run/.mugv/done/c.json").exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_stage_process_dies_with_a_killed_pipeline(tmp_path):
    """SIGKILL the pipeline process (no clean-up runs): its running stage child goes too."""
    pidfile = tmp_path / "child.pid"
    driver = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from mugv.layout import RunLayout
        from mugv.runner import Runner, Stage, Step
        child = ("import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); "
                 "time.sleep(120)")
        Runner(RunLayout(Path({str(tmp_path / "run")!r}))).run(
            [Stage("s", "S", {{}}, [], [Step("sleep", cmd=[sys.executable, "-c", child])])])
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", driver])
    deadline = time.time() + 60
    while not pidfile.exists() or not pidfile.read_text():
        assert time.time() < deadline and proc.poll() is None, "stage child never started"
        time.sleep(0.1)
    child = int(pidfile.read_text())
    assert _alive(child)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while _alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the stage process outlived the killed pipeline"


def test_cpu_seconds_count_the_stage_commands_and_their_children(tmp_path):
    # a step's command starts a child that burns CPU and writes its own CPU time: the step's
    # cpu_seconds (this process's waited-for descendants) hold at least that much
    burn = textwrap.dedent(f"""
        import subprocess, sys
        child = '''
        import time
        while time.process_time() < 0.3:
            pass
        open({str(tmp_path / "child_cpu")!r}, "w").write(str(time.process_time()))
        '''
        subprocess.run([sys.executable, "-c", child], check=True)
        open({str(tmp_path / "out")!r}, "w").write("done")
    """)
    stage = Stage("s", "S", {}, [tmp_path / "out"], [Step("burn", [sys.executable, "-c", burn])])
    (summary,) = Runner(RunLayout(tmp_path / "run")).run([stage])
    child = float((tmp_path / "child_cpu").read_text())
    assert child >= 0.3
    assert summary["steps"][0]["cpu_seconds"] >= child
    assert summary["cpu_seconds"] >= summary["steps"][0]["cpu_seconds"]
    marker = json.loads((tmp_path / "run/.mugv/done/s.json").read_text())
    assert marker["cpu_seconds"] == summary["cpu_seconds"]


def _wait_for(path: Path, what: str) -> str:
    """Python source of a command that waits (up to 60 s) for ``path``, else fails."""
    return (
        "import pathlib, sys, time\n"
        f"p = pathlib.Path({str(path)!r})\n"
        "t = time.time()\n"
        "while not p.exists():\n"
        f"    if time.time() - t > 60: sys.exit('no {what}')\n"
        "    time.sleep(0.05)\n"
    )


def test_independent_stages_run_side_by_side_each_with_its_own_cpu(tmp_path):
    """a -> (b, c) -> d with parallel 2: b and c meet (each waits for the other's start file:
    one after the other would never finish), c ends only after b, yet only b's CPU-burning
    child counts towards b (wait4 per child, not this process's children total)."""
    t = tmp_path
    touch = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text('x')"
    burn = (
        _wait_for(t / "c.started", "c")
        + "while time.process_time() < 0.4:\n    pass\n"
        + f"pathlib.Path({str(t / 'b')!r}).write_text(str(time.process_time()))\n"
    )
    wait_b = _wait_for(t / "b.started", "b") + _wait_for(t / "b", "output of b")
    wait_b += f"pathlib.Path({str(t / 'c')!r}).write_text('c')\n"
    check_d = f"import pathlib; assert pathlib.Path({str(t / 'b')!r}).exists()\n"
    check_d += f"assert pathlib.Path({str(t / 'c')!r}).exists()\n"
    check_d += f"pathlib.Path({str(t / 'd')!r}).write_text('d')\n"

    def cmd(*args: str) -> list[str]:
        return [sys.executable, "-c", *args]

    stages = [
        Stage("a", "A", {}, [t / "a"], [Step("a", cmd(touch, str(t / "a")))]),
        Stage("b", "B", {}, [t / "b"], [
            Step("start", cmd(touch, str(t / "b.started"))), Step("burn", cmd(burn))],
            needs=("a",)),
        Stage("c", "C", {}, [t / "c"], [
            Step("start", cmd(touch, str(t / "c.started"))), Step("wait", cmd(wait_b))],
            needs=("a",)),
        Stage("d", "D", {}, [t / "d"], [Step("check", cmd(check_d))], needs=("b", "c")),
    ]  # fmt: skip
    summary = Runner(RunLayout(t / "run"), parallel=2).run(stages)
    assert [s["stage"] for s in summary] == ["a", "b", "c", "d"]
    assert not any(s["reused"] for s in summary)
    burned = float((t / "b").read_text())
    b, c = summary[1], summary[2]
    # the runner records CPU-seconds rounded to 0.01 (round is monotonic: >= burned, rounded)
    assert b["steps"][1]["cpu_seconds"] >= round(burned, 2) and burned >= 0.4
    assert c["steps"][1]["cpu_seconds"] < burned  # c waited (sleeping) while b burned
    assert c["cpu_seconds"] == round(sum(s["cpu_seconds"] for s in c["steps"]), 2)
    # a second run reuses all four; a forced c redoes c and d only
    summary = Runner(RunLayout(t / "run"), parallel=2).run(stages)
    assert all(s["reused"] for s in summary)
    (t / "c.started").unlink()
    (t / "b.started").touch()  # b is not rerun: c's rendezvous is already met
    summary = Runner(RunLayout(t / "run"), parallel=2).run(stages, force="c")
    assert [s["reused"] for s in summary] == [True, True, False, False]


def test_a_failing_stage_stops_the_stage_beside_it(tmp_path):
    t = tmp_path
    pidfile = t / "c.pid"
    sleeper = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); "
    sleeper += "time.sleep(120)"
    fail = _wait_for(pidfile, "c") + "sys.exit(4)\n"
    stages = [
        Stage("a", "A", {}, [], [Step("a", fn=lambda: None)]),
        Stage("b", "B", {}, [], [Step("fail", [sys.executable, "-c", fail])], needs=("a",)),
        Stage("c", "C", {}, [t / "c"], [Step("sleep", [sys.executable, "-c", sleeper])],
              needs=("a",)),
    ]  # fmt: skip
    with pytest.raises(StageFailed, match=r"stage b: step 'fail' failed \(exit 4\)"):
        Runner(RunLayout(t / "run"), parallel=2).run(stages)
    child = int(pidfile.read_text())
    assert not _alive(child), "the stage beside the failed one kept running"
    assert (t / "run/.mugv/done/a.json").is_file()
    assert not (t / "run/.mugv/done/b.json").exists()
    assert not (t / "run/.mugv/done/c.json").exists()  # redone by the next run


def test_needs_name_earlier_stages(tmp_path):
    stages = _stages(tmp_path)
    stages[0].needs = ("c",)
    with pytest.raises(ValueError, match=r"stage a needs \['c'\]: not an earlier stage"):
        Runner(RunLayout(tmp_path / "run")).run(stages)
