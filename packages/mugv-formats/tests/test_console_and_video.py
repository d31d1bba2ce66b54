"""The shared CLI error boundary (run_command) and the mp4 writer (write_mp4 / encode_mp4)."""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np
import pytest
import yaml
from mugv_formats.config_loading import ConfigError
from mugv_formats.console import run_command
from mugv_formats.errors import ChecksumError
from pydantic import BaseModel

# -- run_command -------------------------------------------------------------------------------


def _raise(exc: BaseException):
    def fn():
        raise exc

    return fn


@pytest.mark.parametrize(
    "exc, message",
    [
        (ValueError("bad\n  value 3"), "bad value 3"),
        (
            ChecksumError("shard a.tar: member x.json: sha256 differs"),
            "shard a.tar: member x.json: sha256 differs",
        ),
        (
            ConfigError("config file c.yaml: field lr: got 'x'"),
            "config file c.yaml: field lr: got 'x'",
        ),
        (FileNotFoundError("no such file: a"), "no such file: a"),
        (NotADirectoryError("b is not a folder"), "b is not a folder"),
        (IsADirectoryError("c is a folder"), "c is a folder"),
        (PermissionError("d: permission denied"), "d: permission denied"),
    ],
)
def test_user_errors_become_one_line_and_exit_2(capsys, exc, message):
    assert run_command("mugv-x", "train", _raise(exc)) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"mugv-x train: error: {message}\n"


def test_yaml_and_validation_errors_read_as_one_line(capsys):
    try:
        yaml.safe_load("a: [1, 2\nb: 3")
    except yaml.YAMLError as e:
        yaml_error = e
    assert run_command("mugv-x", "train", _raise(yaml_error)) == 2
    err = capsys.readouterr().err
    assert err.startswith("mugv-x train: error: invalid YAML: ") and err.count("\n") == 1

    class Cfg(BaseModel):
        lr: float
        steps: int

    try:
        Cfg(lr="fast", steps=2)
    except ValueError as e:
        validation_error = e
    assert run_command("mugv-x", None, _raise(validation_error)) == 2
    assert capsys.readouterr().err == (
        "mugv-x: error: invalid config: lr: Input should be a valid number, "
        "unable to parse string as a number (got 'fast')\n"
    )


def _caught(fn) -> BaseException:
    try:
        fn()
    except BaseException as e:
        return e
    raise AssertionError("no exception")


class _BadStr(ValueError):
    def __str__(self) -> str:
        raise RuntimeError("str() itself fails")


def test_every_user_error_type_prints_one_line(capsys):
    """Issue 23: every exception the boundary catches prints exactly one line, never a
    traceback of the boundary itself: pydantic errors without ``errors()`` (serialization),
    validation errors with newlines in their field names or huge inputs, messages whose
    ``str()`` fails or is empty, OS errors naming a file with a newline."""

    class Cfg(BaseModel):
        model_config = {"arbitrary_types_allowed": True}
        x: object = None

    class Odd:
        pass

    serialization = _caught(lambda: Cfg(x=Odd()).model_dump(mode="json"))
    assert type(serialization).__name__ == "PydanticSerializationError"
    assert not hasattr(serialization, "errors")

    class Strict(BaseModel):
        model_config = {"extra": "forbid"}

    validation = _caught(lambda: Strict.model_validate({"a\nb": "y\n" * 10_000}))
    cases = [
        (serialization, "invalid config: Unable to serialize unknown type"),
        (validation, "invalid config: a b: Extra inputs are not permitted (got 'y"),
        (_BadStr("x"), "_BadStr"),
        (ValueError(""), "ValueError"),
        (FileNotFoundError(2, "No such file or directory", "clip\nname.mp4"), "[Errno 2]"),
    ]
    for exc, start in cases:
        assert run_command("mugv-x", "train", _raise(exc)) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1, err
        message = err.removeprefix("mugv-x train: error: ")
        assert message.startswith(start), err
        assert len(message) < 400, err  # a huge input value is cut short


def test_exit_codes_pass_through_and_bugs_keep_their_traceback(capsys):
    assert run_command("p", "c", lambda: 0) == 0
    assert run_command("p", "c", lambda: None) == 0
    assert run_command("p", "c", lambda: 3) == 3
    with pytest.raises(KeyError):
        run_command("p", "c", _raise(KeyError("a bug")))
    with pytest.raises(OSError):
        run_command("p", "c", _raise(OSError(5, "I/O error")))
    assert run_command("p", "c", _raise(OSError(5, "I/O error")), also=(OSError,)) == 2
    assert capsys.readouterr().err == "p c: error: [Errno 5] I/O error\n"


def test_run_cli_dispatches_sub_commands_and_prints_help(capsys):
    import argparse

    from mugv_formats.console import run_cli

    parser = argparse.ArgumentParser(prog="mugv-x")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("ok").set_defaults(func=lambda args: 0)
    sub.add_parser("bad").set_defaults(func=lambda args: _raise(ValueError("no such clip c7"))())
    assert run_cli("mugv-x", parser, []) == 0
    assert capsys.readouterr().out.startswith("usage: mugv-x")
    assert run_cli("mugv-x", parser, ["ok"]) == 0
    assert run_cli("mugv-x", parser, ["bad"]) == 2
    assert capsys.readouterr().err == "mugv-x bad: error: no such clip c7\n"
    commands = {"ok": lambda args: 5, "bad": lambda args: 0}
    assert run_cli("mugv-x", parser, ["ok"], commands) == 5  # the mapping wins over func
    assert run_cli("mugv-x", parser, ["bad"], name_command=False) == 2
    assert capsys.readouterr().err == "mugv-x: error: no such clip c7\n"


# -- the mp4 writer ----------------------------------------------------------------------------

av = pytest.importorskip("av")
from mugv_formats.video import encode_mp4, write_mp4  # noqa: E402


def _smooth_frames(t: int, h: int, w: int) -> np.ndarray:
    """Gradients moving one pixel a frame: easy to encode, so decoded frames stay close."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = [
        np.stack([(x + i) * 255 / (w + t), y * 255 / h, (x + y) * 255 / (w + h)], -1)
        for i in range(t)
    ]
    return np.round(np.stack(frames)).astype(np.uint8)


def _decode(data: bytes) -> tuple[np.ndarray, Fraction]:
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.video[0]
        rate = stream.average_rate
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(stream)])
    return frames, rate


def test_write_mp4_round_trips_frames_and_rate(tmp_path):
    frames = _smooth_frames(9, 32, 48)
    path = write_mp4(frames, tmp_path / "sub" / "a.mp4", 8.0, crf=10, preset="veryfast")
    assert path == tmp_path / "sub" / "a.mp4"
    assert [p.name for p in path.parent.iterdir()] == ["a.mp4"]  # no temporary file left
    decoded, rate = _decode(path.read_bytes())
    assert decoded.shape == frames.shape and rate == 8
    mse = np.mean((decoded.astype(np.float64) - frames) ** 2)
    assert 10 * np.log10(255**2 / mse) > 35  # PSNR


def test_odd_sizes_are_cropped_and_ntsc_rates_kept_exactly():
    frames = _smooth_frames(4, 33, 47)
    decoded, rate = _decode(encode_mp4(iter(list(frames)), 30000 / 1001))
    assert decoded.shape == (4, 32, 46, 3)
    assert rate == Fraction(30000, 1001)


def test_crf_reaches_the_encoder():
    frames = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    assert len(encode_mp4(frames, 8, crf=0)) > 2 * len(encode_mp4(frames, 8, crf=45))


def test_no_frames_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no frames"):
        write_mp4(np.zeros((0, 8, 8, 3), np.uint8), tmp_path / "a.mp4", 8)
    assert not list(tmp_path.iterdir())


def _waves(t: int, h: int, w: int) -> np.ndarray:
    """Smooth waves brightening a little each frame: content on which libx264's mb-tree rate
    control gave a different MP4 from one encode to the next in one process (2026-12-08)."""
    y = np.sin(np.linspace(0, 6, h))[:, None] * np.cos(np.linspace(0, 3, w))[None, :]
    frames = [np.clip(y * 120 + 128 + 3 * i, 0, 255) for i in range(t)]
    return np.repeat(np.stack(frames).astype(np.uint8)[..., None], 3, -1)


def test_deterministic_encodes_give_the_same_bytes_every_time():
    frames = _waves(17, 144, 176)
    outputs = {encode_mp4(frames, 21.0, crf=17, deterministic=True) for _ in range(6)}
    assert len(outputs) == 1
    decoded, _ = _decode(outputs.pop())  # still a faithful encode
    mse = np.mean((decoded.astype(np.float64) - frames) ** 2)
    assert 10 * np.log10(255**2 / mse) > 35
