"""End-to-end curation: real sample clips -> valid clip shards; engines agree; CLI; resume."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest
import yaml
from mugv_data.cli import main as cli_main
from mugv_data.config import CurateConfig, load_config
from mugv_data.curate import curate, read_rejects
from mugv_data.synth import scene, write_video
from mugv_formats import ClipDataset

SCORES = {
    "brightness",
    "border_ratio",
    "static_diff",
    "frozen_ratio",
    "sharpness",
    "motion",
    "text_ratio",
}
DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def run(inputs, out, *overrides) -> tuple[CurateConfig, list]:
    """Curate with the shipped demo config (+ overrides); returns (config, verified clips)."""
    cfg = load_config(
        DEMO, inputs=[str(i) for i in inputs], output=str(out), overrides=list(overrides)
    )
    curate(cfg, progress=False)
    ds = ClipDataset(out)
    return cfg, [(r, b) for r, b in ds]  # iterating verifies every checksum


def fingerprint(items) -> list[tuple]:
    return [
        (
            r.key,
            round(r.start_s, 6),
            round(r.end_s, 6),
            r.num_frames,
            r.sha256,
            tuple(sorted((k, round(v, 6)) for k, v in r.scores.items())),
        )
        for r, _ in items
    ]


@pytest.fixture(scope="module")
def sequential_run(samples, tmp_path_factory):
    out = tmp_path_factory.mktemp("seq")
    cfg, items = run([samples], out, "engine.kind=sequential")
    return out, cfg, items


def test_curation_of_real_samples_writes_valid_shards(sequential_run):
    out, cfg, items = sequential_run
    assert len(items) >= 3  # the lead's demo needs clips to flow on
    for rec, mp4 in items:
        assert min(rec.width, rec.height) <= 360
        assert set(rec.scores) >= SCORES, rec.scores.keys()
        with av.open(__import__("io").BytesIO(mp4)) as c:
            s = c.streams.video[0]
            n = sum(1 for _ in c.decode(s))
            assert (s.width, s.height) == (rec.width, rec.height)
        assert n == rec.num_frames
        assert rec.end_s - rec.start_s == pytest.approx(rec.num_frames / rec.fps, abs=1.5 / rec.fps)
        assert rec.duration_s >= cfg.split.min_clip_s - 1e-6
    rejects = read_rejects(out)
    assert {r["stage"] for r in rejects} >= {"split", "sharpness"}
    assert all(r["reason"] for r in rejects)
    # every candidate clip is either kept or rejected, exactly once
    kept = {r.key for r, _ in items}
    rejected = {r["key"] for r in rejects if r["key"]}
    assert not kept & rejected
    assert load_config(out / "resolved_config.yaml") == cfg
    html = (out / "report.html").read_text()
    assert "<svg" in html and "report/thumbs/" in html
    assert len(list((out / "report" / "thumbs").glob("*.jpg"))) == len(kept | rejected)


def test_process_pool_engine_gives_the_same_clips(samples, sequential_run, tmp_path):
    _, _, seq_items = sequential_run
    _, items = run([samples], tmp_path / "pp", "engine.kind=process", "engine.workers=2")
    assert fingerprint(items) == fingerprint(seq_items)


#: the process engine with a model pool (one model server running the tests' fake aesthetic
#: model, tests/mugv_data_engine_workers.FakeModels, which rejects nothing at min 0)
PROCESS_WITH_MODEL_POOL = [
    "engine.kind=process",
    "engine.workers=1",
    "engine.model_pool.actors=1",
    "filters.aesthetic.enabled=true",
    "filters.aesthetic.clip_path=/fake/clip",
    "filters.aesthetic.head_path=/fake/head.pth",
    "filters.aesthetic.device=cpu",
    "filters.aesthetic.min=0",
]


@pytest.mark.parametrize(
    "engine", [["engine.kind=sequential"], PROCESS_WITH_MODEL_POOL], ids=["sequential", "pool"]
)
def test_bad_inputs_are_skipped_and_recorded(engine, tmp_path, monkeypatch):
    """Every bad input is one reject with a reason, on the sequential engine and on the
    streaming process engine whose workers feed a model pool."""
    if "engine.model_pool.actors=1" in engine:
        import mugv_data.curate as curate_mod
        from mugv_data_engine_workers import build_fake_models

        monkeypatch.setattr(curate_mod, "build_model_worker", build_fake_models)
        monkeypatch.delenv("MUGV_TEST_MODEL_FAULTS", raising=False)
    d = tmp_path / "in"
    d.mkdir()
    write_video(d / "good.mp4", scene(60, seed=1))
    (d / "zero.mp4").write_bytes(b"")
    # fixed bytes: random ones are sometimes probed by FFmpeg as an audio stream (e.g. MP3 sync)
    (d / "garbage.mp4").write_bytes(random.Random(0).randbytes(20000))
    (d / "notes.mkv").write_text("definitely not a video\n")
    data = (d / "good.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    write_video(d / "one_frame.mp4", scene(1, seed=2))
    with av.open(str(d / "audio.m4a"), "w") as c:  # audio only
        s = c.add_stream("aac", rate=16000)
        import numpy as np

        for i in range(20):
            fr = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            fr.sample_rate, fr.pts = 16000, i * 1024
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    with open(d / "huge.mp4", "wb") as f:  # sparse: takes no disk space
        f.truncate(70 << 30)
    # TS cut mid-stream: decodable up to the cut
    write_video(d / "cut.ts", scene(75, seed=3), codec="mpeg2video", fmt="mpegts")
    ts = (d / "cut.ts").read_bytes()
    (d / "cut.ts").write_bytes(ts[: int(len(ts) * 0.6)])
    cfg = load_config(
        None,
        inputs=[str(d / "*")],
        output=str(tmp_path / "out"),
        overrides=[*engine, "filters.text.enabled=false", "split.min_clip_s=1.0"],
    )
    summary = curate(cfg, progress=False)
    if "engine.model_pool.actors=1" in engine:
        assert "model_pool" in summary.timings and "aesthetic" not in summary.timings
    rej = {Path(r["source"]).name: r for r in read_rejects(tmp_path / "out") if r["key"] is None}
    assert rej["zero.mp4"]["kind"] == "zero-byte"
    # garbage is rejected either as unreadable or as holding no video stream
    assert rej["garbage.mp4"]["kind"] in {"not-a-video", "no-video-stream"}
    assert rej["notes.mkv"]["kind"] == "not-a-video"
    assert rej["truncated.mp4"]["kind"] in {"not-a-video", "corrupt", "decode-error"}
    assert rej["one_frame.mp4"]["kind"] == "too-few-frames"
    assert rej["audio.m4a"]["kind"] == "audio-only"
    assert rej["huge.mp4"]["kind"] == "too-large"
    assert all(str(r["source"]).endswith(n) and r["reason"] for n, r in rej.items())
    assert summary.sources == 9 and summary.sources_rejected == 7
    keys = [r.key for r in ClipDataset(tmp_path / "out").records()]
    assert len(keys) >= 2  # the good file and the readable part of the cut TS still give clips


def test_cli_curate_report_inspect(samples, tmp_path, capsys):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(
        yaml.safe_dump({"engine": {"kind": "sequential"}, "split": {"min_clip_s": 1.0}})
    )
    out = tmp_path / "o"
    rc = cli_main(
        [
            "curate",
            str(cfg_path),
            "--input",
            str(samples / "bikes.mp4"),
            "--output",
            str(out),
            "--set",
            "filters.motion.min=0.2",
            "--no-progress",
        ]
    )
    assert rc == 0
    assert (
        yaml.safe_load((out / "resolved_config.yaml").read_text())["filters"]["motion"]["min"]
        == 0.2
    )
    capsys.readouterr()
    assert cli_main(["inspect", str(out)]) == 0
    info = yaml.safe_load(capsys.readouterr().out)
    assert info["format"] == "mugv.clip-shards" and info["clips"] >= 1
    assert cli_main(["inspect", str(samples / "bikes.mp4")]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["num_frames"] == 250
    (out / "report.html").unlink()
    assert cli_main(["report", str(out)]) == 0 and (out / "report.html").is_file()
    assert (
        cli_main(["curate", "--input", str(samples), "--set", "nope.x=1", "--output", str(out)])
        == 2
    )
    assert "nope" in capsys.readouterr().err


def test_killed_run_resumes_without_duplicates_or_gaps(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(8):
        write_video(d / f"v{i}.mp4", scene(70, seed=10 + i, speed=1.5))
    base = [
        "--input",
        str(d),
        "--set",
        "engine.kind=sequential",
        "--set",
        "filters.text.enabled=false",
        "--set",
        "split.min_clip_s=1.0",
        "--set",
        "output.clips_per_shard=2",
        "--set",
        "dedup.enabled=false",
        "--no-progress",
    ]
    ref = tmp_path / "ref"
    assert cli_main(["curate", *base, "--output", str(ref)]) == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mugv_data.cli", "curate", *base, "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    staged = out / ".staging" / "sources"
    deadline = time.time() + 60
    while time.time() < deadline and (not staged.is_dir() or len(list(staged.glob("*.json"))) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "dataset.json").exists(), "run finished before it was killed"
    assert cli_main(["curate", *base, "--output", str(out)]) == 0
    a = [(r.key, r.sha256) for r in ClipDataset(ref).records()]
    b = [(r.key, r.sha256) for r in ClipDataset(out).records()]
    assert len(a) == len({k for k, _ in a}) >= 8
    assert sorted(a) == sorted(b)


def test_ray_engine_gives_the_same_clips(samples, sequential_run, tmp_path):
    pytest.importorskip("ray")
    _, _, seq_items = sequential_run
    _, items = run([samples], tmp_path / "ray", "engine.kind=ray", "engine.ray_num_cpus=2")
    assert fingerprint(items) == fingerprint(seq_items)


def test_crash_while_writing_shards_resumes(tmp_path, monkeypatch):
    import mugv_formats

    d = tmp_path / "in"
    d.mkdir()
    for i in range(5):
        write_video(d / f"v{i}.mp4", scene(60, seed=30 + i))
    over = [
        "engine.kind=sequential",
        "filters.text.enabled=false",
        "split.min_clip_s=1.0",
        "output.clips_per_shard=2",
        "dedup.enabled=false",
    ]
    ref_cfg = load_config(None, inputs=[str(d)], output=str(tmp_path / "ref"), overrides=over)
    curate(ref_cfg, progress=False)
    cfg = load_config(None, inputs=[str(d)], output=str(tmp_path / "out"), overrides=over)
    real_write = mugv_formats.ClipShardWriter.write
    calls = {"n": 0}

    def crashing_write(self, record, mp4):
        calls["n"] += 1
        if calls["n"] == 4:  # two complete shards, the third one open
            raise KeyboardInterrupt("simulated kill")
        return real_write(self, record, mp4)

    monkeypatch.setattr(mugv_formats.ClipShardWriter, "write", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        curate(cfg, progress=False)
    assert len(list((tmp_path / "out").glob("shard-*.parquet"))) == 1
    monkeypatch.setattr(mugv_formats.ClipShardWriter, "write", real_write)
    curate(cfg, progress=False)
    a = sorted((r.key, r.sha256) for r in ClipDataset(tmp_path / "ref").records())
    b = sorted((r.key, r.sha256) for r in ClipDataset(tmp_path / "out").records())
    assert len(a) == 5 and a == b


def test_fps_normalisation_and_resize_end_to_end(tmp_path):
    from fractions import Fraction

    d = tmp_path / "in"
    d.mkdir()
    write_video(d / "cfr.mp4", scene(75, h=96, w=128, seed=40), fps=25)
    pts, t = [], 0
    for i in range(
        90
    ):  # VFR: alternating 40 ms / 20 ms frame intervals, 30 fps on average... -> avg 33.3 fps
        pts.append(t)
        t += 40 if i % 2 == 0 else 20
    write_video(
        d / "vfr.mkv", scene(90, h=96, w=128, seed=41), pts=pts, time_base=Fraction(1, 1000)
    )
    cfg = load_config(
        None,
        inputs=[str(d)],
        output=str(tmp_path / "out"),
        overrides=[
            "engine.kind=sequential",
            "filters.text.enabled=false",
            "split.min_clip_s=1.0",
            "clip.short_side=48",
            "dedup.enabled=false",
        ],
    )
    curate(cfg, progress=False)
    recs = {r.source.rsplit("/", 1)[-1]: r for r in ClipDataset(tmp_path / "out").records()}
    cfr, vfr = recs["cfr.mp4"], recs["vfr.mkv"]
    assert (cfr.width, cfr.height, cfr.fps, cfr.num_frames) == (64, 48, 25.0, 75)
    # VFR is resampled to its dominant rate: 45 intervals of 40 ms beat 44 of 20 ms
    assert vfr.fps == pytest.approx(25.0)
    assert vfr.num_frames == pytest.approx(68, abs=2)  # 2.72 s at 25 fps
    cfg2 = cfg.model_copy(
        update={
            "clip": cfg.clip.model_copy(update={"fps": 12.5}),
            "output": cfg.output.model_copy(update={"path": str(tmp_path / "o2")}),
        }
    )
    curate(cfg2, progress=False)
    r = next(r for r in ClipDataset(tmp_path / "o2").records() if r.source.endswith("cfr.mp4"))
    assert r.fps == 12.5 and r.num_frames == 37


def test_resume_with_a_different_config_is_refused(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    write_video(d / "a.mp4", scene(60, seed=50))
    over = ["engine.kind=sequential", "filters.text.enabled=false", "split.min_clip_s=1.0"]
    curate(
        load_config(None, inputs=[str(d)], output=str(tmp_path / "o"), overrides=over),
        progress=False,
    )
    # a complete output is replaced only with overwrite (issue 23: behaviour changed on purpose;
    # a rerun used to finish it again in place)
    with pytest.raises(ValueError, match=r"already holds a complete mugv.clip-shards"):
        curate(
            load_config(None, inputs=[str(d)], output=str(tmp_path / "o"), overrides=over),
            progress=False,
        )
    (tmp_path / "o" / "dataset.json").unlink()  # now an interrupted curation of ours
    # same config, other engine: resumed
    curate(
        load_config(
            None, inputs=[str(d)], output=str(tmp_path / "o"), overrides=[*over, "engine.workers=1"]
        ),
        progress=False,
    )
    (tmp_path / "o" / "dataset.json").unlink()
    with pytest.raises(
        ValueError, match=r"other settings \(filters.sharpness.min: 200.0 -> 10.0\)"
    ):
        curate(
            load_config(
                None,
                inputs=[str(d)],
                output=str(tmp_path / "o"),
                overrides=[*over, "filters.sharpness.min=10"],
            ),
            progress=False,
        )


def test_gpu_slots_for_process_workers():
    from mugv_data.engines import gpu_slots

    assert gpu_slots(2, 0.5, 8) == ["0", "1", "0", "1"]  # 2 workers per GPU
    assert gpu_slots(4, 1.0, 2) == ["0", "1"]
    assert gpu_slots(0, 0.0, 4) == []
    with pytest.raises(ValueError, match="no GPU is visible"):
        gpu_slots(0, 0.5, 4)


def test_decoder_released_before_filter_stages_when_frames_are_cached(samples, monkeypatch):
    """With every frame cached, the reader is closed before the stages run (decord's worker
    thread would otherwise burn CPU beside them); scores and encoding still work."""
    import mugv_data.per_source as per_source
    from mugv_data.stages.base import ClipStage

    readers = []
    real_open = per_source.open_reader

    def spy(*args, **kwargs):
        r = real_open(*args, **kwargs)
        readers.append(r)
        return r

    class ReaderState(ClipStage):
        name = "reader_state"

        def process(self, clips):
            for c in clips:
                c.scores["reader_open"] = float(readers[0]._vr is not None)

    monkeypatch.setattr(per_source, "open_reader", spy)
    cfg = load_config(
        Path(__file__).resolve().parents[1] / "configs" / "demo.yaml",
        overrides=["decode.backend=decord"],
    )
    proc = per_source.SourceProcessor(cfg, encode=True)
    proc.stages.append(ReaderState(cfg.filters))
    res = proc(samples / "bikes.mp4")
    scored = [c for c in res.clips if c.rejected_stage != "split"]
    assert res.decoder == "decord" and scored
    assert all(c.scores["reader_open"] == 0.0 for c in scored)
    assert all("sharpness" in c.scores and "text_ratio" in c.scores for c in scored)
    assert any(c.kept and c.mp4 for c in res.clips)


def test_report_draws_every_filter_threshold():
    """Each range filter's score histogram carries its filter's bounds, and the scores with a
    threshold of their own (sharpness per frame under rule=every, frozen_ratio, diff_spike,
    classifier_score) theirs (shake, speed and the classifier had none)."""
    from mugv_data.per_source import build_clip_stages
    from mugv_data.report import _bounds
    from mugv_data.stages.base import RangeFilter

    cfg = load_config(
        None,
        overrides=[
            "filters.aesthetic.enabled=true",
            "filters.aesthetic.clip_path=/fake/clip",
            "filters.aesthetic.head_path=/fake/head.pth",
            "filters.classifier.enabled=true",
            "filters.classifier.model_path=/fake/classifier",
            "filters.classifier.reject_labels=[shaky]",
            "filters.classifier.threshold=0.7",
            "filters.sharpness.rule=every",
        ],
    )
    stages = [s for s in build_clip_stages(cfg) if isinstance(s, RangeFilter)]
    assert {s.score_name for s in stages} >= {"shake", "speed_change", "aesthetic", "text_ratio"}
    for s in stages:
        assert _bounds(cfg.filters, s.score_name) == (s.config.min, s.config.max), s.name
    f = cfg.filters
    assert _bounds(cfg.filters, "sharpness_lo") == (f.sharpness.min, None)
    assert _bounds(cfg.filters, "sharpness_hi") == (None, f.sharpness.max)
    assert _bounds(cfg.filters, "frozen_ratio") == (None, f.static.max_frozen_ratio)
    assert _bounds(cfg.filters, "diff_spike") == (None, 8.0)
    assert _bounds(cfg.filters, "classifier_score") == (None, 0.7)
    assert _bounds(cfg.filters, "dedup_similarity") == (None, None)


def test_deterministic_clips_are_the_same_bytes_on_every_run(tmp_path, monkeypatch):
    """``clip.deterministic=true`` reaches the mp4 writer, and two runs store the same clips."""
    import mugv_data.per_source as per_source

    seen = []
    real = per_source.encode_mp4

    def spy(*args, **kwargs):
        seen.append(kwargs.get("deterministic"))
        return real(*args, **kwargs)

    monkeypatch.setattr(per_source, "encode_mp4", spy)
    d = tmp_path / "in"
    d.mkdir()
    write_video(d / "a.mp4", scene(60, h=144, w=176, seed=7), fps=25)
    shas = []
    for n in range(2):
        cfg = load_config(
            None,
            inputs=[str(d)],
            output=str(tmp_path / f"out{n}"),
            overrides=[
                "engine.kind=sequential",
                "filters.text.enabled=false",
                "split.min_clip_s=1.0",
                "dedup.enabled=false",
                "clip.deterministic=true",
            ],
        )
        curate(cfg, progress=False)
        shas.append([r.sha256 for r in ClipDataset(tmp_path / f"out{n}").records()])
    assert seen and all(s is True for s in seen)
    assert shas[0] and shas[0] == shas[1]
