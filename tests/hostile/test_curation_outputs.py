"""Issue 23, curation (mugv-data) outputs: `mugv-data curate` never replaces what it did not
write, refuses outputs nested with its inputs, resumes only its own unfinished output, runs
one at a time per output, and writes nothing through a link planted in its output."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostile_util import clean_env, make_latents
from mugv_data.cli import main as data_main
from mugv_data.synth import scene, write_video
from mugv_formats import ClipDataset

FAST = [
    "--set",
    "filters.text.enabled=false",
    "--set",
    "split.min_clip_s=1.0",
    "--set",
    "dedup.enabled=false",
    "--engine",
    "sequential",
    "--no-progress",
]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("src") / "videos"
    d.mkdir()
    for i in range(2):
        write_video(d / f"v{i}.mp4", scene(40, seed=60 + i))
    return d


def tree(path: Path) -> dict[str, str]:
    """Everything under ``path`` (itself included): file hashes, folders, link targets."""
    out = {}
    paths = [path, *path.rglob("*")] if path.is_dir() and not path.is_symlink() else [path]
    for p in paths:
        rel = p.relative_to(path).as_posix() if p != path else "."
        if p.is_symlink():
            out[rel] = f"link -> {os.readlink(p)}"
        elif p.is_dir():
            out[rel] = "dir"
        elif p.exists():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def curate(videos: Path, out: Path, *extra: str) -> int:
    return data_main(["curate", "--input", str(videos), "--output", str(out), *FAST, *extra])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# --- what is at --output ---------------------------------------------------------------------


def _user_folder(p: Path) -> None:
    p.mkdir()
    (p / "notes.txt").write_text("mine")
    (p / "holiday.mp4").write_bytes(b"not yours")


def _fake_staging(p: Path) -> None:
    """A user's folder that merely looks like an interrupted curation (no marker of ours)."""
    (p / ".staging" / "sources").mkdir(parents=True)
    (p / "resolved_config.yaml").write_text("{}\n")
    (p / "keep.txt").write_text("mine")


def _other_run(p: Path) -> None:
    from mugv_formats.outputs import claim_output

    claim_output(p, "mugv.dit-run")
    (p / "metrics.jsonl").write_text("{}\n")


def _latents(p: Path) -> None:
    make_latents(p, n=3)


def _file(p: Path) -> None:
    p.write_text("a file")


FOREIGN = {
    "user-folder": _user_folder,
    "fake-staging": _fake_staging,
    "run-folder": _other_run,
    "latent-dataset": _latents,
    "file": _file,
}


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("what", sorted(FOREIGN))
def test_what_we_did_not_write_is_never_replaced(what, overwrite, videos, tmp_path, capsys):
    out = tmp_path / "out"
    FOREIGN[what](out)
    before = tree(out)
    assert curate(videos, out, *(["--overwrite"] if overwrite else [])) == 2
    err = one_line_error(capsys)
    assert str(out) in err
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no sibling left either


def test_link_at_output_is_refused(videos, tmp_path, capsys):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "out")
    assert curate(videos, tmp_path / "out", "--overwrite") == 2
    assert "symbolic link" in one_line_error(capsys)
    assert not any((tmp_path / "real").iterdir())


def test_complete_curation_is_replaced_only_with_overwrite(videos, tmp_path, capsys):
    out = tmp_path / "clips"
    assert curate(videos, out) == 0
    keys = sorted(r.key for r in ClipDataset(out).records())
    (out / "summary.json").write_text("{}")  # to see whether anything is rewritten
    capsys.readouterr()
    before = tree(out)
    assert curate(videos, out) == 2
    assert "--overwrite" in one_line_error(capsys)
    assert tree(out) == before
    assert curate(videos, out, "--overwrite", "--set", "filters.sharpness.min=10") == 0
    assert sorted(r.key for r in ClipDataset(out).records()) == keys
    assert json.loads((out / "summary.json").read_text())["clips_kept"] == len(keys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clips"]


def test_output_nested_with_an_input_is_refused(videos, tmp_path, capsys):
    inside = videos / "clips"
    holder = tmp_path / "holder"
    (holder / "videos").mkdir(parents=True)
    write_video(holder / "videos" / "a.mp4", scene(30, seed=70))
    os.symlink(videos, tmp_path / "videos-link")
    before = tree(videos)
    cases = [
        (videos, videos),  # output == input
        (videos, inside),  # output inside the input
        (holder / "videos", holder),  # input inside the output
        (videos, tmp_path / "videos-link" / "clips"),  # inside, through a link
        (tmp_path / "videos-link", videos),  # the same folder, through a link
    ]
    for inp, out in cases:
        args = ["curate", "--input", str(inp), "--output", str(out), *FAST, "--overwrite"]
        assert data_main(args) == 2, (inp, out)
        err = one_line_error(capsys)
        assert "input" in err and str(out) in err, err
    assert tree(videos) == before
    assert sorted(p.name for p in holder.iterdir()) == ["videos"]


def test_own_unfinished_output_is_resumed_and_other_settings_refused(videos, tmp_path, capsys):
    out = tmp_path / "clips"
    assert curate(videos, out) == 0
    ref = sorted((r.key, r.sha256) for r in ClipDataset(out).records())
    for name in ("dataset.json", "manifest.parquet"):
        (out / name).unlink()  # as a run killed before its header
    capsys.readouterr()
    assert curate(videos, out, "--set", "clip.crf=30") == 2
    assert "clip.crf: 20 -> 30" in one_line_error(capsys)
    assert curate(videos, out) == 0
    assert sorted((r.key, r.sha256) for r in ClipDataset(out).records()) == ref


# --- one curation per output -----------------------------------------------------------------


def test_second_curation_on_the_same_output_is_refused_naming_the_first(tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(6):
        write_video(d / f"v{i}.mp4", scene(60, seed=80 + i))
    out = tmp_path / "clips"
    cmd = [sys.executable, "-m", "mugv_data.cli", "curate", "--input", str(d), "--output", str(out)]
    first = subprocess.Popen(
        [*cmd, *FAST], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=clean_env()
    )
    try:
        staged = out / ".staging" / "sources"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and first.poll() is None:
            if staged.is_dir() and any(staged.glob("*.json")):
                break
            time.sleep(0.05)
        assert first.poll() is None, "the first curation ended before the second started"
        for extra in ([], ["--overwrite"]):
            assert curate(d, out, *extra) == 2
            err = one_line_error(capsys)
            assert "in use" in err and f"pid {first.pid}" in err, err
        assert first.wait(timeout=240) == 0, first.stderr.read().decode()[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert len(ClipDataset(out).records()) >= 6  # the first run was not disturbed


# --- links planted in an output of ours ------------------------------------------------------

PLANTED = [".staging", ".staging/clips", ".staging/thumbs", "report", "report/thumbs"]
PLANTED_FILES = ["summary.json", "resolved_config.yaml", "rejects.parquet", "report.html"]


@pytest.mark.parametrize("where", PLANTED + PLANTED_FILES)
def test_nothing_is_written_through_a_link_planted_in_the_output(where, videos, tmp_path, capsys):
    out = tmp_path / "clips"
    assert curate(videos, out) == 0
    (out / "dataset.json").unlink()  # an unfinished curation of ours: resumable
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep")
    target = victim if where in PLANTED else victim / "precious.txt"
    planted = out / where
    if planted.is_dir():
        import shutil

        shutil.rmtree(planted)
    else:
        planted.unlink(missing_ok=True)
    os.symlink(target, planted)
    before = tree(victim)
    capsys.readouterr()
    assert curate(videos, out) == 2
    err = one_line_error(capsys)
    assert "symbolic link" in err and where.split("/")[-1] in err, err
    assert tree(victim) == before
