"""Run stages as child processes, reuse finished ones, show progress.

A stage is a list of steps; a step is one command (a stage package's console script, or
``python -m mugv.tools ...`` for the umbrella's own glue). Each child:

- writes its output to ``RUN/logs/STAGE.log`` (the live display shows its last line);
- dies with this process (``prctl(PR_SET_PDEATHSIG, SIGKILL)`` armed before ``exec``), and is
  killed when this process stops on an error or Ctrl-C.

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
        self.stage_task = None

    def print(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text, highlight=False)
        else:
            print(text, flush=True)

    def start_stage(self, name: str, steps: int) -> None:
        if self.progress is not None:
            self.stage_task = self.progress.add_task(f"  {name}", total=steps, detail="")

    def step(self, title: str, detail: str = "") -> None:
        if self.progress is not None and self.stage_task is not None:
            self.progress.update(self.stage_task, detail=f"{title}: {detail}" if detail else title)

    def step_done(self) -> None:
        if self.progress is not None and self.stage_task is not None:
            self.progress.advance(self.stage_task)

    def end_stage(self) -> None:
        if self.progress is not None:
            if self.stage_task is not None:
                self.progress.remove_task(self.stage_task)
                self.stage_task = None
            self.progress.advance(self.pipeline)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


class Runner:
    """Runs stages in the run folder ``layout``: markers in ``layout.done``, logs in
    ``layout.logs``; each child with ``threads`` Torch / OpenMP threads."""

    def __init__(self, layout: RunLayout, *, threads: int = 2, display: Display | None = None):
        self.layout = layout
        self.threads = threads
        self.display = display

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

    def _run_cmd(self, stage: Stage, step: Step, log: Path) -> None:
        assert step.cmd is not None
        with open_append_nofollow(log) as f:
            f.write(f"\n$ {' '.join(step.cmd)}\n")
            f.flush()
            proc = subprocess.Popen(
                step.cmd,
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env(),
                preexec_fn=die_with_parent,
            )
            try:
                while proc.poll() is None:
                    if self.display is not None:
                        self.display.step(step.title, _last_line(log))
                    time.sleep(0.25)
            finally:
                if proc.poll() is None:  # Ctrl-C or an error here: the child goes too
                    proc.kill()
                    proc.wait()
        if proc.returncode != 0:
            raise StageFailed(
                f"stage {stage.name}: step '{step.title}' failed (exit {proc.returncode}); "
                f"last lines of {log}:\n" + _tail(log, 25)
            )

    def run(self, stages: list[Stage], force: str | None = None) -> list[dict]:
        """Run or reuse each stage in order. Returns one summary dict per stage."""
        names = [s.name for s in stages]
        if force is not None and force not in names:
            raise ValueError(f"--force {force!r}: no such stage; stages are {', '.join(names)}")
        forced = set(names[names.index(force) :]) if force else set()
        self.run_id = claim_run_folder(self.layout)
        real_dirs(self.layout, self.layout.logs)
        upstream, summary = "", []
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
                summary.append(
                    {
                        "stage": stage.name,
                        "reused": True,
                        "seconds": done["seconds"],
                        "steps": done.get("steps", []),
                    }
                )
                if self.display is not None:
                    self.display.end_stage()
                continue
            summary.append(self._run_stage(stage, key, marker, why))
        return summary

    def _say(self, text: str) -> None:
        if self.display is not None:
            self.display.print(text)
        else:
            print(text, flush=True)

    def _run_stage(self, stage: Stage, key: str, marker: Path, why: str) -> dict:
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
        t0, c0 = time.perf_counter(), cpu_seconds()
        steps = []
        for step in stage.steps:
            if self.display is not None:
                self.display.step(step.title)
            s0, sc0 = time.perf_counter(), cpu_seconds()
            if step.cmd is not None:
                self._run_cmd(stage, step, log)
            else:
                assert step.fn is not None
                try:
                    step.fn()
                except (OSError, RuntimeError, ValueError) as e:
                    raise StageFailed(f"stage {stage.name}: step '{step.title}' failed: {e}") from e
            dt, dc = time.perf_counter() - s0, cpu_seconds() - sc0
            steps.append({"title": step.title, "seconds": round(dt, 2), "cpu_seconds": round(dc, 2)})
            self._say(f"    {step.title}: {dt:.1f} s ({dc:.1f} CPU-s)")
            if self.display is not None:
                self.display.step_done()
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        write_json_atomic(
            marker,
            {
                "key": key,
                "stage": stage.name,
                "seconds": round(seconds, 2),
                "cpu_seconds": round(cpu, 2),
                "steps": steps,
                "finished": datetime.now(UTC).isoformat(timespec="seconds"),
                "mugv": __version__,
                "run_id": self.run_id,
                "files": stage_listing(self.layout, paths),
            },
        )
        if self.display is not None:
            self.display.end_stage()
        self._say(f"[{stage.name}] done in {seconds:.1f} s ({cpu:.1f} CPU-s)")
        return {
            "stage": stage.name,
            "reused": False,
            "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu, 2),
            "steps": steps,
        }


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
