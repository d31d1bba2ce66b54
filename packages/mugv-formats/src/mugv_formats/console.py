"""The error boundary of every mugv command line: user errors become one line and exit 2.

A user error is a bad config, a bad input path or a file that breaks the format contract. It
is reported as ``PROG COMMAND: error: MESSAGE`` on stderr, on one line, without a traceback;
anything else (a bug) keeps its traceback. This module imports only the standard library and
PyYAML, so a CLI's start-up does not pay for pydantic or pyarrow.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping

import yaml

# FormatError and ConfigError (mugv_formats) and pydantic's ValidationError are ValueErrors.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    yaml.YAMLError,
)


def one_line(exc: BaseException) -> str:
    """A user error's message on one line.

    A pydantic ``ValidationError`` lists each invalid field as ``loc: message (got value)``;
    a YAML error reads ``invalid YAML: ...``; any other message has its whitespace runs
    (newlines included) joined by single spaces."""
    if isinstance(exc, yaml.YAMLError):
        return "invalid YAML: " + " ".join(str(exc).split())
    if isinstance(exc, ValueError) and type(exc).__module__.startswith("pydantic"):
        return "invalid config: " + "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']} (got {err.get('input')!r})"
            for err in exc.errors()  # type: ignore[attr-defined]
        )
    return " ".join(str(exc).split())


def run_command(
    prog: str,
    command: str | None,
    fn: Callable[[], int | None],
    *,
    also: tuple[type[BaseException], ...] = (),
) -> int:
    """Run ``fn()`` and return its exit code (``None`` counts as 0).

    A user error (:data:`USER_ERRORS`, plus ``also``) is printed as one line,
    ``PROG COMMAND: error: MESSAGE`` (``PROG: error: MESSAGE`` when ``command`` is empty), and
    gives exit code 2."""
    where = f"{prog} {command}" if command else prog
    try:
        code = fn()
    except (*USER_ERRORS, *also) as exc:
        print(f"{where}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    return 0 if code is None else int(code)


def run_cli(
    prog: str,
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    commands: Mapping[str, Callable[[argparse.Namespace], int | None]] | None = None,
    *,
    name_command: bool = True,
    also: tuple[type[BaseException], ...] = (),
) -> int:
    """The ``main`` of a CLI with sub-commands (stored in ``args.command``): parse ``argv``;
    without a sub-command print the help and return 0; else run the sub-command's handler,
    ``commands[args.command](args)`` (or ``args.func(args)`` when ``commands`` is None),
    through :func:`run_command` (errors name the sub-command unless ``name_command`` is
    False)."""
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    handler = args.func if commands is None else commands[args.command]
    return run_command(
        prog, args.command if name_command else None, lambda: handler(args), also=also
    )
