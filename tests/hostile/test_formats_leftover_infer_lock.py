"""mugv-infer holds one run lock per folder output (issue 23, concurrency): latent shards,
frames folders, ``save_pretrained`` and ``save_lora`` are written under
``mugv_formats.outputs.output_lock``. A second run on the same folder is refused on one line
naming the holder (pid), before any model loads, and leaves the folder unchanged."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hostile_util import clean_env

pytest.importorskip("diffusers")

sys.path.insert(0, str(Path(__file__).parents[2] / "packages" / "mugv-infer" / "tests"))
from mugv_infer_fixtures import tiny_parts, tiny_transformer

_HOLD = textwrap.dedent(
    """
    import sys
    from mugv_formats.outputs import output_lock
    with output_lock(sys.argv[1], "--out"):
        print("held", flush=True)
        sys.stdin.readline()
    """
)

_TRY = textwrap.dedent(
    """
    import sys
    from mugv_formats.outputs import OutputLockedError, output_lock
    try:
        with output_lock(sys.argv[1]):
            print("free")
    except OutputLockedError as e:
        print("locked:", e)
    """
)


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict[str, Path]:
    return tiny_parts(tmp_path_factory.mktemp("infer-parts"))


@pytest.fixture
def holder():
    """``hold(path)``: another process holding ``path``'s output lock; yields its pid."""
    procs: list[subprocess.Popen] = []

    def hold(path: Path) -> int:
        proc = subprocess.Popen(
            [sys.executable, "-c", _HOLD, str(path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=clean_env(),
        )  # fmt: skip
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc.pid

    yield hold
    for proc in procs:
        proc.communicate("\n", timeout=30)


def _argv(parts, out, *extra) -> list[str]:
    return [
        "generate",
        "--model", str(parts["model"]),
        "--vae", str(parts["vae"]),
        "--text-encoder", str(parts["t5"]),
        "--prompt", "a cat walks on the grass",
        "--resolution", "32x32",
        "--frames", "9",
        "--steps", "1",
        "--out", str(out),
        "--set", "runtime.dtype=float32",
        "--set", "runtime.device=cpu",
        *map(str, extra),
    ]  # fmt: skip


def _tree(folder: Path) -> dict[str, bytes | None]:
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
        for p in folder.rglob("*")
    }


@pytest.mark.parametrize("kind", ["frames", "latent", "latent-append"])
def test_a_second_generate_on_a_held_folder_is_refused_naming_the_holder(
    parts, tmp_path, capsys, holder, monkeypatch, kind
):
    from mugv_infer import run
    from mugv_infer.cli import main

    out = tmp_path / "out"
    extra = [] if kind == "frames" else ["--output-type", "latent"]
    if kind == "latent-append":  # a dataset of ours to append to, made by a first run
        assert main(_argv(parts, out, *extra)) == 0, capsys.readouterr().err
        capsys.readouterr()
        extra += ["--append", "--seed", "5"]

    def refuse(*a, **k):
        raise AssertionError("models were loaded before the output lock was checked")

    monkeypatch.setattr(run, "_build", refuse)
    pid = holder(out)
    before = _tree(out)
    assert main(_argv(parts, out, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "in use by another run" in err and f"pid {pid} " in err and str(out) in err, err
    assert _tree(out) == before


def test_generate_holds_the_lock_while_it_writes_and_frees_it_after(
    parts, tmp_path, capsys, monkeypatch
):
    """While one generate writes its latent folder, another process cannot lock it (and is
    told our pid); once the run ended the folder is free again."""
    import os

    from mugv_infer import run
    from mugv_infer.cli import main

    out = tmp_path / "lat"
    seen: list[str] = []
    finish = run._finish

    def probe(cfg, plan, write):
        result = subprocess.run(
            [sys.executable, "-c", _TRY, str(out)],
            capture_output=True, text=True, env=clean_env(), timeout=120,
        )  # fmt: skip
        seen.append(result.stdout.strip())
        return finish(cfg, plan, write)

    monkeypatch.setattr(run, "_finish", probe)
    assert main(_argv(parts, out, "--output-type", "latent")) == 0, capsys.readouterr().err
    assert len(seen) == 1 and seen[0].startswith("locked:"), seen
    assert f"pid {os.getpid()} " in seen[0], seen
    again = subprocess.run(
        [sys.executable, "-c", _TRY, str(out)],
        capture_output=True, text=True, env=clean_env(), timeout=120,
    )  # fmt: skip
    assert again.stdout.strip() == "free", again.stdout + again.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lat"]  # no lock file left beside


def test_save_lora_and_save_pretrained_refuse_a_held_folder(parts, tmp_path, holder):
    from mugv_formats.outputs import OutputLockedError
    from mugv_infer import MUGVPipeline
    from mugv_infer.enhancer import add_lora, save_lora

    lora = tmp_path / "lora"
    pid = holder(lora)
    with pytest.raises(OutputLockedError, match=rf"path {lora} is in use .*pid {pid} "):
        save_lora(add_lora(tiny_transformer()), lora)
    assert list(lora.iterdir()) == [] or [p.name for p in lora.iterdir()] == [".mugv-lock"]

    saved = tmp_path / "pipe"
    pid = holder(saved)
    pipe = MUGVPipeline.from_parts(parts["model"], parts["vae"], parts["t5"])
    with pytest.raises(OutputLockedError, match=rf"save_directory {saved} is in use .*pid {pid} "):
        pipe.save_pretrained(saved)
    assert "pipeline.json" not in {p.name for p in saved.iterdir()}
