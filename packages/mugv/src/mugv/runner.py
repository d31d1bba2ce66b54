"""Run stages as child processes, reuse finished ones, show progress.

A stage is a list of steps; a step is one command (a stage package's console script, or
``python -m mugv.tools ...`` for the umbrella's own glue). Each child:

- writes its output to ``RUN/logs/STAGE.log`` (the live display shows its last line);
- dies with this process (``prctl(PR_SET_PDEATHSIG, SIGKILL)`` armed before ``exec``), and is
  killed when this process stops on an error or Ctrl-C.

Stages run in list order, each once the stages it ``needs`` finished (default: the one
before it, so a plain list runs one after another); with ``parallel > 1`` up to that many
independent stages run side by side (each child's CPU time comes from its own ``wait4``
rusage, so per-stage CPU-seconds stay exact). A failing stage stops the others' children.

A stage that finished writes ``RUN/.mugv/done/STAGE.json`` atomically, holding a key: the
sha256 of its resolved settings, the previous stage's key and the mugv version, and what it
left at each output. A later run whose key matches, and whose outputs are all present, reuses
the stage and says so. A different key, a missing output or ``--force STAGE`` (which also
redoes every later stage) removes the stage's outputs and runs it again: only outputs this
run folder's runs wrote (:mod:`mugv.ownership`); anything else there is refused, not removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mugv_formats import atomic_write_text, open_append_nofollow
from mugv_formats.lifecycle import die_with_parent
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Column

from mugv import __version__
from mugv.layout import RunLayout
from mugv.ownership import (
    check_removable,
    claim_run_folder,
    real_dirs,
    remove,
    stage_listing,
    write_claim,
)


def script(name: str) -> str:
    """A console script of this environment (beside the interpreter), else from PATH."""
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else name


@dataclass
class Step:
    """One child process (``cmd``) or an in-process function (``fn``, fast glue only)."""

    title: str
    cmd: list[str] | None = None
    fn: Callable[[], None] | None = None


@dataclass
class Stage:
    name: str
    title: str
    settings: dict[str, Any]
    """Everything that decides the stage's result (stage configs, paths, inputs)."""
    outputs: list[Path]
    """Files/folders the stage writes; all must exist for a reuse; removed before a re-run."""
    steps: list[Step] = field(default_factory=list)
    scratch: list[Path] = field(default_factory=list)
    """Temporary paths of an interrupted attempt; removed before a re-run."""
    needs: tuple[str, ...] | None = None
    """Earlier stages whose files this one reads (it starts once they finished); None: the
    stage before it in the list."""


@dataclass
class _Active:
    """A stage being run: its next step, the running child and the step's clocks."""

    stage: Stage
    key: str
    marker: Path
    log: Path
    t0: float
    next_step: int = 0
    proc: subprocess.Popen | None = None
    log_file: Any = None
    step_t0: float = 0.0
    steps: list[dict] = field(default_factory=list)


class StageFailed(RuntimeError):
    pass


def write_json_atomic(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str))


def stage_key(stage: Stage, upstream: str) -> str:
    blob = json.dumps(
        {
            "stage": stage.name,
            "settings": stage.settings,
            "upstream": upstream,
            "mugv": __version__,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _last_line(log: Path) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4096))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    parts = [p.strip() for p in tail.replace("\r", "\n").split("\n") if p.strip()]
    return parts[-1][-110:] if parts else ""


class Display:
    """rich progress on a terminal, plain lines otherwise (logs, CI, tests)."""

    def __init__(self, total: int, console=None):
        self.console = console or Console(stderr=False)
        self.live = self.console.is_terminal
        self.progress = None
        if self.live:
            self.progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True)),
                BarColumn(bar_width=12),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn(
                    "{task.fields[detail]}",
                    style="dim",
                    table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis"),
                ),
                console=self.console,
                expand=True,
            )
            self.progress.start()
            self.pipeline = self.progress.add_task("pipeline", total=total, detail="")
        self.stage_tasks: dict[str, Any] = {}

    def print(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text, highlight=False)
        else:
            print(text, flush=True)

    def start_stage(self, name: str, steps: int) -> None:
        if self.progress is not None:
            self.stage_tasks[name] = self.progress.add_task(f"  {name}", total=steps, detail="")

    def step(self, name: str, title: str, detail: str = "") -> None:
        if self.progress is not None and name in self.stage_tasks:
            text = f"{title}: {detail}" if detail else title
            self.progress.update(self.stage_tasks[name], detail=text)

    def step_done(self, name: str) -> None:
        if self.progress is not None and name in self.stage_tasks:
            self.progress.advance(self.stage_tasks[name])

    def end_stage(self, name: str | None = None) -> None:
        if self.progress is not None:
            task = self.stage_tasks.pop(name, None) if name is not None else None
            if task is not None:
                self.progress.remove_task(task)
            self.progress.advance(self.pipeline)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


class Runner:
    """Runs stages in the run folder ``layout``: markers in ``layout.done``, logs in
    ``layout.logs``; each child with ``threads`` Torch / OpenMP threads; up to ``parallel``
    stages at a time."""

    def __init__(
        self,
        layout: RunLayout,
        *,
        threads: int = 2,
        display: Display | None = None,
        parallel: int = 1,
    ):
        if parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {parallel}")
        self.layout = layout
        self.threads = threads
        self.display = display
        self.parallel = parallel

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        n = str(self.threads)
        env.update(
            OMP_NUM_THREADS=n,
            MKL_NUM_THREADS=n,
            # idle OpenMP threads sleep instead of spinning: on a small machine shared with
            # other jobs, spinning threads slowed the tiny VAE's training several-fold
            OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
            PYTHONWARNINGS="ignore",
            TOKENIZERS_PARALLELISM="false",
            TQDM_MININTERVAL="1",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            TRANSFORMERS_VERBOSITY="error",
        )
        # Bytecode caches: without them every stage recompiles torch, Megatron and transformers
        # from source (~15 s a process on 2 cores); the first stage writes them, the rest reuse.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(k, None)  # each stage is a single process of its own
        return env

    def run(self, stages: list[Stage], force: str | None = None) -> list[dict]:
        """Run or reuse each stage (a stage once its needs finished; up to ``parallel`` at a
        time). Returns one summary dict per stage, in the list's order."""
        names = [s.name for s in stages]
        if force is not None and force not in names:
            raise ValueError(f"--force {force!r}: no such stage; stages are {', '.join(names)}")
        needs = {s.name: _needs(s, names[:i]) for i, s in enumerate(stages)}
        forced = set(names[names.index(force) :]) if force else set()
        self.run_id = claim_run_folder(self.layout)
        real_dirs(self.layout, self.layout.logs)
        # keys chain through the list (a stage's key covers every earlier stage's settings),
        # so a changed setting redoes every later stage, whichever order they run in
        upstream, summary, todo = "", {}, []
        for stage in stages:
            key = stage_key(stage, upstream)
            upstream = key
            marker = self.layout.marker(stage.name)
            done = read_marker(marker)
            why = None
            if stage.name in forced:
                why = "forced"
            elif done is None:
                why = "not run yet"
            elif done.get("key") != key:
                why = "settings or an earlier stage changed"
            elif missing := [str(p) for p in stage.outputs if not p.exists()]:
                why = f"output missing: {missing[0]}"
            if why is None:
                self._say(
                    f"[{stage.name}] reused: finished {done['finished']} ({done['seconds']:.1f} s)"
                )
                summary[stage.name] = {
                    "stage": stage.name,
                    "reused": True,
                    "seconds": done["seconds"],
                    "steps": done.get("steps", []),
                }
                if self.display is not None:
                    self.display.end_stage()
            else:
                todo.append((stage, key, marker, why))
        active: list[_Active] = []
        try:
            while todo or active:
                finished = False
                for item in list(todo):
                    if len(active) >= self.parallel:
                        break
                    if all(n in summary for n in needs[item[0].name]):
                        todo.remove(item)
                        active.append(self._start_stage(*item))
                for act in list(active):
                    if self._advance(act):
                        active.remove(act)
                        summary[act.stage.name] = self._finish_stage(act)
                        finished = True
                if finished:
                    continue  # stages waiting for it may start now
                if not active:  # cannot happen: every need is an earlier stage
                    raise RuntimeError(f"stage {todo[0][0].name}: its needs never finished")
                time.sleep(0.25)
        finally:
            for act in active:  # an error, or Ctrl-C: the running children go too
                self._stop(act)
        return [summary[n] for n in names]

    def _say(self, text: str) -> None:
        if self.display is not None:
            self.display.print(text)
        else:
            print(text, flush=True)

    def _start_stage(self, stage: Stage, key: str, marker: Path, why: str) -> _Active:
        paths = [*stage.outputs, *stage.scratch]
        # nothing is removed unless every path in the way is one this run folder's runs wrote
        ours = check_removable(self.layout, stage.name, paths, self.run_id, read_marker(marker))
        for p in paths:  # the folders they go in: real folders of the run folder, no links
            real_dirs(self.layout, p.parent)
        write_claim(self.layout, stage.name, paths, self.run_id)
        real_dirs(self.layout, marker.parent)
        marker.unlink(missing_ok=True)  # a failed re-run must not look finished
        for out in ours:
            remove(out)
        log = self.layout.log(stage.name)
        atomic_write_text(log, f"# mugv {__version__}: stage {stage.name} ({why})\n")
        self._say(f"[{stage.name}] {stage.title} ({why})")
        if self.display is not None:
            self.display.start_stage(stage.name, len(stage.steps))
        return _Active(stage, key, marker, log, time.perf_counter())

    def _advance(self, run: _Active) -> bool:
        """Move ``run`` on as far as it goes without waiting: reap its finished child, run
        glue steps, start the next command. True once its last step finished."""
        stage = run.stage
        while True:
            if run.proc is not None:
                step = stage.steps[run.next_step]
                pid, status, usage = os.wait4(run.proc.pid, os.WNOHANG)
                if pid == 0:  # still running
                    if self.display is not None:
                        self.display.step(stage.name, step.title, _last_line(run.log))
                    return False
                run.proc.returncode = code = os.waitstatus_to_exitcode(status)
                run.proc, cpu = None, usage.ru_utime + usage.ru_stime
                run.log_file.close()
                if code != 0:
                    raise StageFailed(
                        f"stage {stage.name}: step '{step.title}' failed (exit {code}); "
                        f"last lines of {run.log}:\n" + _tail(run.log, 25)
                    )
                self._step_done(run, step, cpu)
            if run.next_step == len(stage.steps):
                return True
            step = stage.steps[run.next_step]
            if self.display is not None:
                self.display.step(stage.name, step.title)
            run.step_t0 = time.perf_counter()
            if step.cmd is None:
                assert step.fn is not None
                c0 = time.process_time()
                try:
                    step.fn()
                except (OSError, RuntimeError, ValueError) as e:
                    raise StageFailed(f"stage {stage.name}: step '{step.title}' failed: {e}") from e
                self._step_done(run, step, time.process_time() - c0)
                continue
            run.log_file = open_append_nofollow(run.log)
            run.log_file.write(f"\n$ {' '.join(step.cmd)}\n")
            run.log_file.flush()
            try:
                run.proc = subprocess.Popen(
                    step.cmd,
                    stdout=run.log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=self.env(),
                    preexec_fn=die_with_parent,
                )
            except BaseException:
                run.log_file.close()
                raise

    def _step_done(self, run: _Active, step: Step, cpu: float) -> None:
        dt = time.perf_counter() - run.step_t0
        run.steps.append({"title": step.title, "seconds": round(dt, 2), "cpu_seconds": round(cpu, 2)})
        run.next_step += 1
        where = f"[{run.stage.name}] " if self.parallel > 1 else ""
        self._say(f"    {where}{step.title}: {dt:.1f} s ({cpu:.1f} CPU-s)")
        if self.display is not None:
            self.display.step_done(run.stage.name)

    def _stop(self, run: _Active) -> None:
        """Kill and reap ``run``'s running child, if any."""
        if run.proc is not None:
            if run.proc.poll() is None:
                run.proc.kill()
            run.proc.wait()
            run.proc = None
            run.log_file.close()

    def _finish_stage(self, run: _Active) -> dict:
        stage = run.stage
        seconds = time.perf_counter() - run.t0
        cpu = sum(s["cpu_seconds"] for s in run.steps)
        paths = [*stage.outputs, *stage.scratch]
        write_json_atomic(
            run.marker,
            {
                "key": run.key,
                "stage": stage.name,
                "seconds": round(seconds, 2),
                "cpu_seconds": round(cpu, 2),
                "steps": run.steps,
                "finished": datetime.now(UTC).isoformat(timespec="seconds"),
                "mugv": __version__,
                "run_id": self.run_id,
                "files": stage_listing(self.layout, paths),
            },
        )
        if self.display is not None:
            self.display.end_stage(stage.name)
        self._say(f"[{stage.name}] done in {seconds:.1f} s ({cpu:.1f} CPU-s)")
        return {
            "stage": stage.name,
            "reused": False,
            "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu, 2),
            "steps": run.steps,
        }


def _needs(stage: Stage, earlier: list[str]) -> tuple[str, ...]:
    """The stages ``stage`` waits for: its ``needs``, else the one before it."""
    if stage.needs is None:
        return tuple(earlier[-1:])
    if unknown := [n for n in stage.needs if n not in earlier]:
        raise ValueError(f"stage {stage.name} needs {unknown}: not an earlier stage")
    return tuple(stage.needs)


def cpu_seconds() -> float:
    """User + system CPU time of this process and of every child it waited for (so of each
    finished stage command, its own children included)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def read_marker(path: Path) -> dict | None:
    """A finished stage's marker, or None where it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and "key" in data else None


def _tail(path: Path, n: int) -> str:
    try:
        text = path.read_text(errors="replace").replace("\r", "\n")
    except OSError:
        return ""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(lines[-n:])
