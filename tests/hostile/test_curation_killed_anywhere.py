"""A curation SIGKILLed at any step of the streaming pipeline resumes to the same dataset.

One output is curated by a chain of runs, each killed (SIGKILL, from inside, at an exact
call) at a later step than the one before: while staging sources, while writing the clip
index, before dedup writes its result, between caption units, mid-shard, before the rejects
table and before the report; a last run completes it. The result must equal an uninterrupted
run's: the same clips (keys, bytes, scores, captions, tags, weights), the same rejects, each
exactly once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from hostile_util import clean_env

pytestmark = pytest.mark.slow

OVERRIDES = [
    "engine.kind=sequential", "filters.text.enabled=false", "split.min_clip_s=0.5",
    "split.max_clip_s=1.0", "captions.source=sidecar", "captions.batch_size=1",
    "output.clips_per_shard=2", "dedup.threshold=0.9",
]  # fmt: skip

# (module, attribute path, call at which the process kills itself before the call runs)
KILL_POINTS = [
    ("mugv_data.staging", "Staging.save", 3),
    ("mugv_data.clip_index", "IndexWriter._flush", 1),
    ("mugv_data.dataset_units", "write_table_atomic", 1),  # dedup's result
    ("mugv_data.curate", "write_caption_unit", 2),
    ("mugv_formats.clips", "ClipShardWriter.write", 3),
    ("mugv_data.curate", "RejectsWriter.close", 1),
    ("mugv_data.report", "ReportBuilder.write", 1),
]

RUNNER = r"""
import importlib, json, os, signal, sys
from mugv_data.config import load_config
from mugv_data.curate import curate
spec = json.loads(sys.argv[1])
if spec["kill"]:
    mod_name, attr, at = spec["kill"]
    mod = importlib.import_module(mod_name)
    owner, _, name = attr.rpartition(".")
    target = getattr(mod, owner) if owner else mod
    real = getattr(target, name)
    calls = [0]
    def killer(*a, **k):
        calls[0] += 1
        if calls[0] >= at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)
    setattr(target, name, killer)
cfg = load_config(None, inputs=[spec["input"]], output=spec["output"], overrides=spec["over"])
curate(cfg, progress=False)
"""


def _run(d: Path, out: Path, kill) -> int:
    spec = json.dumps(dict(input=str(d), output=str(out), over=OVERRIDES, kill=kill))
    return subprocess.run(
        [sys.executable, "-c", RUNNER, spec], env=clean_env(), capture_output=True, timeout=600
    ).returncode


def _dataset(out: Path):
    from mugv_data.curate import read_rejects
    from mugv_formats import ClipDataset

    recs = [
        (
            r.key,
            r.sha256,
            tuple(sorted(r.scores.items())),
            r.caption,
            tuple(r.tags),
            r.sample_weight,
        )
        for r, _ in ClipDataset(out)  # iterating checks every clip's checksum
    ]
    rejects = Counter(tuple(sorted(r.items())) for r in read_rejects(out))
    return recs, rejects


def test_curation_killed_at_every_step_resumes_to_the_same_dataset(tmp_path):
    from mugv_data.synth import scene, write_video

    d = tmp_path / "in"
    d.mkdir()
    for i in range(5):
        write_video(d / f"v{i}.mp4", scene(60, seed=40 + i, speed=1.5 + 0.5 * i))
        (d / f"v{i}.txt").write_text(f"a person with a dog, take {i}")
    (d / "v2b.mp4").write_bytes((d / "v2.mp4").read_bytes())  # a duplicate source: dedup
    (d / "broken.mp4").write_bytes(b"\x00not a video")  # a file reject
    ref = tmp_path / "ref"
    assert _run(d, ref, None) == 0
    ref_recs, ref_rejects = _dataset(ref)
    assert len(ref_recs) >= 6 and len(ref_recs) == len({r[0] for r in ref_recs})
    assert any(stage == ("stage", "dedup") for r in ref_rejects for stage in r)

    out = tmp_path / "out"
    for kill in KILL_POINTS:
        assert _run(d, out, kill) == -9, f"the run was not killed at {kill}"
        assert not (out / "dataset.json").exists()
    assert _run(d, out, None) == 0
    recs, rejects = _dataset(out)
    # scores are compared to 1e-9: OpenCV's multi-threaded Farneback flow (the motion score)
    # differs in the 11th digit between processes; everything else must be equal
    assert [r[:2] + r[3:] for r in recs] == [r[:2] + r[3:] for r in ref_recs]
    for r, want in zip(recs, ref_recs, strict=True):
        assert dict(r[2]) == pytest.approx(dict(want[2]), rel=1e-9, abs=1e-12), r[0]
    assert rejects == ref_rejects
    assert json.loads((out / "summary.json").read_text())["clips_kept"] == len(ref_recs)


POOL_RUNNER = r"""
import json, sys, time
from pathlib import Path
from mugv_data.config import load_config
from mugv_data.curate import curate
from mugv_data.staging import Staging
spec = json.loads(sys.argv[1])
if spec["stop_at"]:
    save = Staging.save
    def save_then_wait(self, res):
        save(self, res)
        if len(list(self.sources.glob("*.json"))) >= spec["stop_at"]:
            Path(spec["marker"]).write_text("staged")
            time.sleep(600)  # SIGKILLed from outside: servers and workers must die with us
    Staging.save = save_then_wait
cfg = load_config(None, inputs=[spec["input"]], output=spec["output"], overrides=spec["over"])
curate(cfg, progress=False)
"""


def test_curation_with_model_servers_killed_mid_run_leaves_no_process_and_resumes(tmp_path):
    """engine.kind=process with 2 model servers (tiny random aesthetic model): the driver
    SIGKILLed after 2 sources are staged leaves no process of its session (servers, workers);
    the resumed run equals an uninterrupted sequential run (clips, scores, rejects)."""
    from hostile_util import kill_and_check_no_leak
    from mugv_data.random_models import write_aesthetic_models
    from mugv_data.synth import scene, write_video

    d = tmp_path / "in"
    d.mkdir()
    for i in range(4):
        write_video(d / f"v{i}.mp4", scene(30, seed=11 + i) + scene(30, seed=21 + i))
    clip, head = write_aesthetic_models(tmp_path / "models", "tiny")
    over = [
        "filters.text.enabled=false", "split.min_clip_s=1.0", "captions.source=none",
        "filters.aesthetic.enabled=true", f"filters.aesthetic.clip_path={clip}",
        f"filters.aesthetic.head_path={head}", "filters.aesthetic.device=cpu",
        "filters.aesthetic.min=-1e9",
    ]  # fmt: skip
    pool = [
        "engine.kind=process", "engine.workers=1", "engine.model_pool.actors=2",
        "engine.model_pool.batch_clips=1",
    ]  # fmt: skip

    def start(out: Path, extra: list[str], stop_at: int = 0) -> subprocess.Popen:
        spec = dict(input=str(d), output=str(out), over=[*over, *extra], stop_at=stop_at,
                    marker=str(tmp_path / "staged"))  # fmt: skip
        return subprocess.Popen(
            [sys.executable, "-c", POOL_RUNNER, json.dumps(spec)],
            env=clean_env(), start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

    ref = tmp_path / "ref"
    assert start(ref, ["engine.kind=sequential"]).wait(timeout=600) == 0
    out = tmp_path / "out"
    run = start(out, pool, stop_at=2)
    deadline = time.monotonic() + 600
    while not (tmp_path / "staged").exists():
        assert run.poll() is None, run.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "2 sources were never staged"
        time.sleep(0.2)
    assert kill_and_check_no_leak(run, within=10.0) == set()
    assert not (out / "dataset.json").exists()
    resumed = start(out, pool)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()[-2000:]
    recs, rejects = _dataset(out)
    want, want_rejects = _dataset(ref)
    assert [r[:2] + r[3:] for r in recs] == [r[:2] + r[3:] for r in want] and recs
    for r, w in zip(recs, want, strict=True):
        assert dict(r[2]) == pytest.approx(dict(w[2]), rel=1e-5, abs=1e-6), r[0]
    assert rejects == want_rejects
