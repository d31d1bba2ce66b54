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


def _short_repr(value: object, limit: int = 120) -> str:
    try:
        text = repr(value)
    except Exception:  # a value whose repr fails still gets a message
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _pydantic_errors(exc: BaseException) -> str | None:
    """``loc: message (got value); ...`` of a pydantic ``ValidationError``, else None (other
    pydantic errors, e.g. ``PydanticSerializationError``, have no ``errors()``)."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return None
    try:
        items = list(errors())
        return "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')} "
            f"(got {_short_repr(err.get('input'))})"
            for err in items
        )
    except Exception:  # not the shape we know: fall back to the message
        return None


def one_line(exc: BaseException) -> str:
    """A user error's message on one line, whatever the exception type.

    A pydantic ``ValidationError`` lists each invalid field as ``loc: message (got value)``;
    another pydantic error (serialization, schema) reads ``invalid config: MESSAGE``; a YAML
    error reads ``invalid YAML: ...``; any other message has its whitespace runs (newlines
    included) joined by single spaces. An empty message, or one whose ``str()`` fails, is
    replaced by the exception's type name. Never raises."""
    try:
        text = str(exc)
    except Exception:
        text = ""
    text = " ".join(text.split()) or type(exc).__name__
    if isinstance(exc, yaml.YAMLError):
        return "invalid YAML: " + text
    if type(exc).__module__.startswith("pydantic"):
        listed = _pydantic_errors(exc)
        return "invalid config: " + " ".join((listed or text).split())
    return text


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
