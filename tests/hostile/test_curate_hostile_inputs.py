"""Generated bad videos through `mugv-data curate` (defects 2, 6, 8): each is one reject
record with a reason or gives clips; user errors are one line with exit code 2; a SIGKILLed
curation leaves no process behind."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from hostile_util import clean_env, descendants, kill_and_check_no_leak
from mugv_data.cli import main as data_main
from mugv_data.curate import read_rejects
from mugv_data.synth import scene, texture, write_video
from mugv_formats import ClipDataset

FAST = [
    "--set",
    "filters.text.enabled=false",
    "--set",
    "split.min_clip_s=1.0",
    "--set",
    "dedup.enabled=false",
    "--no-progress",
]


def _audio_only(path: Path) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        for i in range(10):
            fr = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            fr.sample_rate, fr.pts = 16000, i * 1024
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _png(path: Path) -> None:
    img = av.VideoFrame.from_ndarray(texture(32, 32), format="rgb24").to_image()
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hostile") / "in"
    d.mkdir()
    write_video(d / "good.mp4", scene(45, seed=1))
    (d / "zero.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("not a video at all\n")
    (d / "random.mp4").write_bytes(random.Random(0).randbytes(8000))
    data = (d / "good.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 3])
    _audio_only(d / "audio_only.mp4")
    write_video(d / "one_frame.mp4", scene(1, seed=2))
    _png(d / "picture.mp4")
    write_video(d / "rotated.mp4", scene(40, seed=4), rotation=90)
    write_video(d / "portrait.mp4", scene(40, h=128, w=72, seed=5))
    write_video(d / "ünïcödé 名前.mp4", scene(40, seed=6))
    os.symlink("loop_b.mp4", d / "loop_a.mp4")
    os.symlink("loop_a.mp4", d / "loop_b.mp4")
    (d / "folder.mp4").mkdir()
    # VFR: intervals 40, 40, 40, 120 ms repeated -> dominant 25 fps, average 16.7 fps
    pts, t = [], 0
    for i in range(48):
        pts.append(t)
        t += 120 if i % 4 == 3 else 40
    write_video(d / "vfr.mkv", scene(48, seed=7), pts=pts, time_base=Fraction(1, 1000))
    return d


@pytest.fixture(scope="module")
def curated(hostile_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "clips"
    rc = data_main(
        [
            "curate",
            "--input",
            str(hostile_dir),
            "--output",
            str(out),
            "--engine",
            "sequential",
            *FAST,
        ]
    )
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def curated_with_model_pool(hostile_dir, tmp_path_factory):
    """The same inputs on the streaming process engine: 2 per-source workers feeding one model
    server that runs a tiny random aesthetic model (min -1e9: it rejects nothing)."""
    from mugv_data.random_models import write_aesthetic_models

    clip, head = write_aesthetic_models(tmp_path_factory.mktemp("models"), "tiny")
    pool = ["engine.workers=2", "engine.model_pool.actors=1", "filters.aesthetic.enabled=true",
            f"filters.aesthetic.clip_path={clip}", f"filters.aesthetic.head_path={head}",
            "filters.aesthetic.device=cpu", "filters.aesthetic.min=-1e9"]  # fmt: skip
    out = tmp_path_factory.mktemp("out_pool") / "clips"
    sets = [a for kv in pool for a in ("--set", kv)]
    args = ["curate", "--input", str(hostile_dir), "--output", str(out), "--engine", "process"]
    assert data_main([*args, *sets, *FAST]) == 0
    # the model stage ran in the pool, not in the per-source workers, on every kept clip
    timings = json.loads((out / "summary.json").read_text())["timings"]
    assert "model_pool" in timings and "aesthetic" not in timings, timings
    recs = ClipDataset(out).records()
    assert recs and all("aesthetic" in r.scores for r in recs)
    return out


EXPECTED_REJECT = {
    "zero.mp4": {"zero-byte"},
    "text.mp4": {"not-a-video"},
    "random.mp4": {"not-a-video", "no-video-stream"},
    "truncated.mp4": {"not-a-video", "corrupt", "decode-error"},
    "audio_only.mp4": {"audio-only"},
    "one_frame.mp4": {"too-few-frames"},
    "picture.mp4": {"not-a-video", "too-few-frames", "no-video-stream"},
    "loop_a.mp4": {"not-a-file"},
    "loop_b.mp4": {"not-a-file"},
    "folder.mp4": {"not-a-file"},
}


@pytest.mark.parametrize("run", ["curated", "curated_with_model_pool"])
def test_every_bad_input_is_one_reject_with_a_reason(run, request):
    """On the sequential engine, and on the process engine with a model pool (the same
    records as the sequential engine's)."""
    curated = request.getfixturevalue(run)
    rejects = [r for r in read_rejects(curated) if r["key"] is None]
    by_name = {}
    for r in rejects:
        name = Path(r["source"]).name
        assert name not in by_name, f"{name} rejected twice"
        by_name[name] = r
    for name, kinds in EXPECTED_REJECT.items():
        assert name in by_name, f"{name}: no reject record (silently skipped)"
        assert by_name[name]["kind"] in kinds, by_name[name]
        assert by_name[name]["reason"]
    if run != "curated":  # the same records as the sequential engine's
        seq = request.getfixturevalue("curated")
        want = {Path(r["source"]).name: r for r in read_rejects(seq) if r["key"] is None}
        assert by_name == want


def test_good_rotated_portrait_and_unicode_inputs_give_clips(curated):
    sources = {Path(r.source).name for r in ClipDataset(curated).records()}
    assert {"good.mp4", "rotated.mp4", "portrait.mp4", "ünïcödé 名前.mp4"} <= sources


def test_vfr_clip_is_resampled_to_its_dominant_rate(curated):
    """Defect 7: with clip.fps unset a VFR source keeps its timing at its dominant rate."""
    (rec,) = [r for r in ClipDataset(curated).records() if r.source.endswith("vfr.mkv")]
    assert rec.fps == pytest.approx(25.0)
    # every output frame is 40 ms: the clip's span in the source is its frames / fps
    assert rec.end_s - rec.start_s == pytest.approx(rec.num_frames / rec.fps, abs=0.045)


def test_symlink_loop_given_directly_is_one_reject(hostile_dir, tmp_path):
    out = tmp_path / "clips"
    args = ["curate", "--input", str(hostile_dir / "loop_a.mp4"), str(hostile_dir / "good.mp4")]
    assert data_main([*args, "--output", str(out), "--engine", "sequential", *FAST]) == 0
    kinds = {Path(r["source"]).name: r["kind"] for r in read_rejects(out) if r["key"] is None}
    assert kinds == {"loop_a.mp4": "not-a-file"}


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mugv_data.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_missing_config_file_is_one_line_exit_2(tmp_path, capsys):
    assert data_main(["curate", str(tmp_path / "nope.yaml"), "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "nope.yaml" in err and len(err.splitlines()) == 1


def test_output_naming_an_existing_file_is_one_line_exit_2(hostile_dir, tmp_path, capsys):
    f = tmp_path / "taken"
    f.write_text("x")
    args = ["curate", "--input", str(hostile_dir / "good.mp4"), "--output", str(f)]
    assert data_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "taken" in err and len(err.splitlines()) == 1


def test_inspect_of_missing_path_is_one_line_exit_2(tmp_path, capsys):
    assert data_main(["inspect", str(tmp_path / "gone.mp4")]) == 2
    assert "gone.mp4" in capsys.readouterr().err


def test_sigkilled_process_pool_curation_leaves_no_process(tmp_path):
    """Defect 2: pool workers and the resource tracker die with the driver."""
    d = tmp_path / "in"
    d.mkdir()
    for i in range(6):
        write_video(d / f"v{i}.mp4", scene(60, seed=20 + i))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mugv_data.cli", "curate", "--input", str(d), "--output", str(out)]
    cmd += ["--engine", "process", "--set", "engine.workers=2", *FAST]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=clean_env(),
        start_new_session=True,
    )
    staged = out / ".staging" / "sources"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        if staged.is_dir() and any(staged.glob("*.json")):
            break  # the pool workers are up and have finished a source
        time.sleep(0.05)
    assert proc.poll() is None, "curation ended before it could be killed"
    left = kill_and_check_no_leak(proc)
    assert not left, f"processes left after SIGKILL of the driver: {sorted(left)}"


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return "(gone)"


def _processes_naming(text: str) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmd and state not in ("Z", "X"):
            found.add(int(entry.name))
    return found


@pytest.mark.slow  # ~1 min: starts a local Ray cluster
def test_sigkilled_ray_curation_leaves_no_process(tmp_path):
    """Defect 2 with the Ray engine: the local cluster the driver started (GCS, raylet, the
    actors' workers) goes with it. Ray's processes leave the driver's session, so they are
    found by the cluster's own temp folder in their command lines."""
    import shutil
    import signal
    import tempfile

    pytest.importorskip("ray")
    d = tmp_path / "in"
    d.mkdir()
    for i in range(6):
        write_video(d / f"v{i}.mp4", scene(60, seed=40 + i))
    out = tmp_path / "out"
    ray_tmp = tempfile.mkdtemp(prefix="mr", dir="/tmp")  # short: Ray's socket paths are long
    cmd = [sys.executable, "-m", "mugv_data.cli", "curate", "--input", str(d), "--output", str(out)]
    cmd += ["--engine", "ray", "--set", "engine.ray_num_cpus=2", *FAST]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**clean_env(), "RAY_TMPDIR": ray_tmp},
        start_new_session=True,
    )
    try:
        staged = out / ".staging" / "sources"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if staged.is_dir() and any(staged.glob("*.json")):
                break  # the actors are up and have finished a source
            time.sleep(0.1)
        assert proc.poll() is None, "curation ended before it could be killed"
        assert _processes_naming(ray_tmp), "no Ray process found by its temp folder"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        left = descendants(proc.pid) | _processes_naming(ray_tmp)
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = descendants(proc.pid) | _processes_naming(ray_tmp)
        names = {pid: _cmdline(pid)[:160] for pid in left}
        assert not names, f"processes left after SIGKILL of the Ray driver: {names}"
    finally:
        for pid in descendants(proc.pid) | _processes_naming(ray_tmp):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
