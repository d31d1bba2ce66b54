"""The umbrella's run folder under hostile conditions (issue 23): it removes only what its runs
wrote, refuses folders it did not create, a run dir that is a file or read-only, and never
writes through a planted symbolic link.

The pipeline's real stage list (``mugv.stages.build_stages``: every stage's real output paths)
runs with each stage's steps replaced by one that writes those outputs, so a whole pipeline
takes milliseconds; the command line (``mugv.cli.main``) runs in-process on the same stages.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hostile_util import clean_env
from mugv import cli, stages
from mugv.config import load_config
from mugv.layout import STAGE_NAMES, RunLayout
from mugv.ownership import RunFolderError
from mugv.runner import Runner, Step

FILE_SUFFIXES = (".yaml", ".json", ".jsonl", ".html")
BUILD_STAGES = stages.build_stages  # the real one (the fixture patches the module's name)


def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (links not followed) with its content hash or link target."""
    out = {}
    for here, dirs, files in os.walk(root, followlinks=False):
        for name in [*dirs, *files]:
            p = Path(here) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
    return out


def _writer(paths: list[Path]):
    def fn() -> None:
        for p in paths:
            if p.suffix in FILE_SUFFIXES:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(f"written by the stage: {p.name}")
            else:
                (p / "sub").mkdir(parents=True, exist_ok=True)
                (p / "sub" / "part.bin").write_bytes(b"stage output")

    return fn


def fake_stages(cfg, run: RunLayout):
    """The real stages (names, settings, outputs, scratch), each step writing its outputs."""
    out = BUILD_STAGES(cfg, run)
    for s in out:
        s.steps = [Step(f"write {s.name}", fn=_writer(s.outputs))]
    return out


@pytest.fixture
def pipeline(tmp_path, monkeypatch):
    """``(cfg, layout, video)``: a config whose only input is a (never decoded) file."""
    video = tmp_path / "inputs" / "holiday.mp4"
    video.parent.mkdir()
    video.write_bytes(b"not decoded here")
    run_dir = tmp_path / "run"
    overrides = [f"run_dir={run_dir}", "curate.samples=false", f"curate.inputs=['{video}']"]
    cfg = load_config(None, overrides)
    monkeypatch.setattr(stages, "build_stages", lambda c, r: fake_stages(c, r))
    return cfg, RunLayout(run_dir), video


def _runner(run: RunLayout) -> Runner:
    return Runner(run)


def _run(cfg, run: RunLayout, force: str | None = None):
    return _runner(run).run(fake_stages(cfg, run), force=force)


def _mugv(capsys, *args: str) -> tuple[int, str]:
    code = cli.main(list(args))
    err = capsys.readouterr().err
    return code, err


def _plant(run: RunLayout) -> dict[Path, bytes]:
    """A user's files at RUN/clips/ and RUN/<every stage name>/ (and beside every output)."""
    planted = {run.clips / "my-holiday.mp4": b"user video"}
    for name in STAGE_NAMES:
        planted[run.root / name / "mine.txt"] = f"user file in {name}".encode()
    for p, data in planted.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return planted


def _intact(planted: dict[Path, bytes]) -> None:
    for p, data in planted.items():
        assert p.is_file() and p.read_bytes() == data, f"{p} (the user's) was removed or changed"


def test_user_files_in_a_finished_run_are_never_removed(pipeline):
    cfg, run, _ = pipeline
    _run(cfg, run)
    assert (run.root / ".mugv" / "run.json").is_file()
    planted = _plant(run)
    for force in STAGE_NAMES:  # every redo of every stage, and a plain re-run
        with pytest.raises(RunFolderError, match=r"not written by this run"):
            _run(cfg, run, force=force)
        _intact(planted)
    changed = load_config(
        None,
        [f"run_dir={run.root}", "curate.samples=false",
         f"curate.inputs={cfg.curate.inputs}", "threads=3", "vae.recon_frames=9"],
    )  # fmt: skip
    with pytest.raises(RunFolderError):
        _run(changed, run)
    _intact(planted)
    # the user moves their files out: the redo goes through
    for p in planted:
        p.unlink()
    _run(cfg, run, force="curate")


def test_user_files_before_a_stage_ever_ran_are_never_removed(pipeline):
    cfg, run, _ = pipeline
    run.root.mkdir()
    _runner(run).run([])  # the run folder is ours (empty, then marked) ...
    planted = _plant(run)  # ... but its stage paths hold the user's files
    for force in (None, "curate"):
        with pytest.raises(RunFolderError, match=r"stage curate: .* not written by this run"):
            _run(cfg, run, force=force)
        _intact(planted)


def test_a_link_in_place_of_a_stage_folder_is_refused_and_its_target_kept(pipeline, tmp_path):
    cfg, run, _ = pipeline
    _run(cfg, run)
    mine = tmp_path / "my-videos"
    mine.mkdir()
    (mine / "keep.mp4").write_bytes(b"user video")
    before = tree(mine)
    for name, path in (("curate", run.clips), ("dit", run.dit_export), ("report", run.report)):
        moved = path.with_name(path.name + ".moved")
        path.rename(moved)
        path.symlink_to(mine, target_is_directory=True)
        with pytest.raises(RunFolderError, match="not written by this run"):
            _run(cfg, run, force=name)
        assert tree(mine) == before and path.is_symlink()
        path.unlink()
        moved.rename(path)


def test_a_foreign_run_folder_is_refused_with_and_without_force(pipeline, capsys):
    cfg, run, video = pipeline
    foreign = run.root
    for p in [foreign / "clips" / "a.mp4", foreign / "vae" / "b.txt", foreign / "notes.txt"]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(p.name)
    before = tree(foreign)
    for extra in ([], ["--force", "curate"], ["--force", "report"]):
        code, err = _mugv(
            capsys, "demo", "--no-samples", "--input", str(video), "--run-dir", str(foreign), *extra
        )
        assert code == 2 and err.count("\n") == 1, err
        assert str(foreign) in err and "not created by mugv" in err
        assert tree(foreign) == before
    # the same through the runner (e.g. a run folder of another tool, or mugv before 0.x)
    with pytest.raises(RunFolderError, match="not created by mugv"):
        _run(cfg, run, force="curate")
    assert tree(foreign) == before


def test_a_mugv_demo_then_a_rerun_works_in_a_fresh_and_an_empty_folder(pipeline, capsys):
    _, run, video = pipeline
    run.root.mkdir()  # empty: taken
    args = ("demo", "--no-samples", "--input", str(video), "--run-dir", str(run.root))
    assert _mugv(capsys, *args)[0] == 0
    assert _mugv(capsys, *args, "--force", "curate")[0] == 0
    assert (run.timings).is_file() and run.report.is_file()


@pytest.mark.parametrize("kind", ["file", "read-only", "parent-file", "dangling-link"])
def test_a_bad_run_dir_is_one_line_and_exit_2(pipeline, capsys, tmp_path, kind):
    _, _, video = pipeline
    target = tmp_path / "target"
    if kind == "file":
        target.write_text("a file")
    elif kind == "read-only":
        target.mkdir()
        target.chmod(0o555)
    elif kind == "parent-file":
        (tmp_path / "afile").write_text("x")
        target = tmp_path / "afile" / "run"
    else:
        target.symlink_to(tmp_path / "nowhere" / "run")
    try:
        code, err = _mugv(
            capsys, "demo", "--no-samples", "--input", str(video), "--run-dir", str(target)
        )
    finally:
        if kind == "read-only":
            target.chmod(0o755)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("mugv demo: error: run folder")
    if kind == "read-only":
        assert os.listdir(target) == []


def _outside(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "outside"
    out.mkdir(exist_ok=True)
    victim = out / "victim.txt"
    victim.write_text("precious")
    return out, victim


@pytest.mark.parametrize("planted", ["logs", ".mugv/done", "configs", ".mugv/claims"])
def test_no_write_through_a_planted_folder_link(pipeline, tmp_path, planted, capsys):
    cfg, run, video = pipeline
    _run(cfg, run)
    out, _ = _outside(tmp_path)
    before = tree(out)
    link = run.root / planted
    moved = link.with_name(link.name + ".moved")
    link.rename(moved)
    link.symlink_to(out, target_is_directory=True)
    args = ("demo", "--no-samples", "--input", str(video), "--run-dir", str(run.root))
    code, err = _mugv(capsys, *args, "--force", "curate")
    assert code == 2 and "symbolic link" in err and err.count("\n") == 1, err
    assert tree(out) == before


@pytest.mark.parametrize(
    "planted",
    ["logs/curate.log", "logs/report.log", "timings.json", "resolved_config.yaml",
     ".mugv/done/curate.json", ".mugv/claims/curate.json", "report.html", "configs/vae.yaml"],
)  # fmt: skip
def test_no_write_through_a_planted_file_link(pipeline, tmp_path, planted, capsys):
    cfg, run, video = pipeline
    _run(cfg, run)
    out, victim = _outside(tmp_path)
    link = run.root / planted
    link.unlink(missing_ok=True)
    link.symlink_to(victim)
    args = ("demo", "--no-samples", "--input", str(video), "--run-dir", str(run.root))
    code, err = _mugv(capsys, *args, "--force", "curate")
    assert victim.read_text() == "precious", f"wrote through {planted}"
    assert code in (0, 2) and "Traceback" not in err
    if code == 2:
        assert err.count("\n") == 1
    assert sorted(os.listdir(out)) == ["victim.txt"]


def test_the_ownership_marker_is_written_once_and_atomically(pipeline):
    cfg, run, _ = pipeline
    _run(cfg, run)
    owner = (run.root / ".mugv" / "run.json").read_text()
    assert '"tool": "mugv"' in owner and '"run_id"' in owner and '"version"' in owner
    _run(cfg, run, force="vae")
    assert (run.root / ".mugv" / "run.json").read_text() == owner
    assert not [p for p in (run.root / ".mugv").iterdir() if p.name.endswith(".tmp")]
    assert stat.S_ISREG(os.lstat(run.root / ".mugv" / "run.json").st_mode)


def test_a_second_run_on_one_run_folder_is_refused_naming_the_holder(pipeline, tmp_path, capsys):
    """A real ``mugv demo`` (its curate stage sleeps until told) holds the run folder; a second
    ``mugv demo --force curate`` on it is refused, naming the first; the first finishes."""
    _, run, video = pipeline
    ready, go = tmp_path / "ready", tmp_path / "go"
    driver = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from mugv import cli, stages
        from test_umbrella_run_folder import BUILD_STAGES, _writer
        from mugv.runner import Step

        def wait_then_write(paths):
            def fn():
                Path({str(ready)!r}).write_text("1")
                while not Path({str(go)!r}).exists():
                    time.sleep(0.05)
                _writer(paths)()
            return fn

        def build(cfg, run):
            out = BUILD_STAGES(cfg, run)
            for s in out:
                s.steps = [Step("w", fn=wait_then_write(s.outputs))]
            return out

        stages.build_stages = build
        sys.exit(cli.main(sys.argv[1:]))
        """
    )
    args = ["demo", "--no-samples", "--input", str(video), "--run-dir", str(run.root)]
    first = subprocess.Popen([sys.executable, "-c", driver, *args], env=clean_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first run never started its stage"
            time.sleep(0.05)
        before = tree(run.root)
        for extra in ([], ["--force", "curate"]):
            code, err = _mugv(capsys, *args, *extra)
            assert code == 2 and err.count("\n") == 1, err
            assert "in use by another run" in err and f"pid {first.pid} on " in err, err
            assert tree(run.root) == before
        go.write_text("1")
        out, err = first.communicate(timeout=120)
        assert first.returncode == 0, out + err
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert _mugv(capsys, *args)[0] == 0  # the lock went with the first run
