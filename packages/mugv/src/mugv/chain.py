"""Several pipeline commands in one process (``python -m mugv.tools chain``).

Each stage command is a console script of a stage package; started as its own process it
pays its imports (torch, Megatron-Core, diffusers, transformers: 2-6 s each on 2 cores) before
any work. Commands of one stage that run one after another (a trainer and its export, the
T2V and I2V generations) share those imports when run here, each through its own entry point
exactly as its script calls it: same code, same arguments, same files.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import entry_points
from pathlib import Path


def is_tool_command(argv: list[str]) -> bool:
    """Whether ``argv`` is ``python -m mugv.tools ...`` (as :func:`mugv.stages.tool` makes it)."""
    return len(argv) >= 3 and argv[1:3] == ["-m", "mugv.tools"]


def run_in_process(argv: list[str]) -> int:
    """Run one pipeline command in this process and return its exit status: a console script
    of this environment (``argv[0]``, found by its name among the installed entry points and
    called as its script calls it, with ``sys.argv`` = ``argv``) or ``python -m mugv.tools``.
    ``sys.argv`` and ``os.environ`` are restored afterwards (a trainer sets the process-group
    variables of its one-process run; the next command picks its own)."""
    saved_argv, saved_env = list(sys.argv), dict(os.environ)
    try:
        if is_tool_command(argv):
            from mugv.tools import main  # the tools import this module

            def entry() -> int:
                return main(argv[3:], in_process=True)
        else:
            found = entry_points(group="console_scripts", name=Path(argv[0]).name)
            if not found:
                raise ValueError(f"{argv[0]}: not a console script of this environment")
            entry = next(iter(found)).load()
            sys.argv = [argv[0], *argv[1:]]
        try:
            code = entry()
        except SystemExit as e:
            code = e.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)  # SystemExit("message"): exit status 1, as Python does
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)


def chain(commands: list[list[str]]) -> int:
    """Run ``commands`` one after another in this process (:func:`run_in_process`); the exit
    status of the first that fails (after naming it), else 0."""
    for argv in commands:
        print("$", " ".join(argv), flush=True)
        code = run_in_process(argv)
        if code != 0:
            print(f"mugv.tools chain: {Path(argv[0]).name} failed (exit {code})", file=sys.stderr)
            return code
    return 0
