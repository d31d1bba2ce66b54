"""The CPU-chain benchmarks stay runnable: throughput.py's documented variants are valid config
overrides, and encode_presets.py measures a tiny clip end to end (issue 24)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from mugv_data.config import load_config
from mugv_data.synth import scene, write_video

BENCH = Path(__file__).parents[1] / "benchmarks"
DEMO = Path(__file__).parents[1] / "configs" / "demo.yaml"


@pytest.fixture(scope="module")
def bench_path():
    sys.path.insert(0, str(BENCH))
    yield
    sys.path.remove(str(BENCH))


def test_throughput_variants_are_valid_overrides(bench_path):
    import throughput

    assert {"yuv", "fast", "fast (decord)"} <= set(throughput.FAST_VARIANTS)
    assert set(throughput.FAST_VARIANTS["fast (decord)"]) < set(throughput.FAST_VARIANTS["fast"])
    for name, sets in throughput.FAST_VARIANTS.items():
        cfg = load_config(DEMO, overrides=["decode.threads=1", *sets])
        for s in sets:  # every override took effect
            key, _, value = s.partition("=")
            obj = cfg
            for part in key.split("."):
                obj = getattr(obj, part)
            assert str(obj).lower() == value.lower(), (name, s, obj)


def test_encode_presets_measures_a_tiny_clip(bench_path, tmp_path, monkeypatch):
    import encode_presets

    d = tmp_path / "in"
    d.mkdir()
    write_video(d / "a.mp4", scene(10, 64, 96, speed=2.0, seed=3))
    out = tmp_path / "enc.json"
    argv = ["encode_presets.py", "--input", str(d), "--repeats", "1", "--json", str(out)]
    argv += ["--setting", "ref=veryfast", "--setting", "u=ultrafast,crf=30"]
    monkeypatch.setattr(sys, "argv", argv)
    encode_presets.main()
    res = json.loads(out.read_text())
    assert res["frames"] == 10 and res["reference"] == "ref"
    ref, fast = res["results"]
    assert ref["bytes_vs_reference"] == 1.0 and ref["psnr_vs_reference_db"] == 0.0
    assert ref["luma_psnr_db"] > 35 and fast["crf"] == 30
    assert fast["luma_psnr_db"] < ref["luma_psnr_db"]  # crf 30 is coarser than crf 20
    with pytest.raises(ValueError, match="unknown key 'qp'"):
        encode_presets.parse_setting("x=veryfast,qp=3")


def test_fast_levers_judges_verdicts_crossings_missing_scores_and_tolerances(bench_path):
    """fast_levers.compare: a score moving across its filter's bound is a crossing (even when
    an earlier stage rejects the clip), a dropped score is missing, sharpness may move 2 % and
    brightness 2 levels (the sample tests' tolerances), shake not at all."""
    import fast_levers

    cfg = load_config(DEMO)
    base = {
        "a": (None, {"sharpness": 300.0, "brightness": 100.0, "shake": 0.5}),
        "b": ("sharpness", {"sharpness": 100.0, "brightness": 100.0, "shake": 0.5}),
    }

    def with_scores(a: dict, b: dict, verdict_b: str | None = "sharpness"):
        return {"a": (None, {**base["a"][1], **a}), "b": (verdict_b, {**base["b"][1], **b})}

    same = fast_levers.compare(cfg, base, with_scores({"sharpness": 305.9}, {"brightness": 101.9}))
    assert same["within_sample_tolerances"] and not same["crossings"]
    assert same["max_rel"]["sharpness"] == pytest.approx(5.9 / 300, abs=1e-6)
    off = fast_levers.compare(cfg, base, with_scores({"sharpness": 306.1}, {}))
    assert not off["within_sample_tolerances"] and not off["crossings"]
    shaky = fast_levers.compare(cfg, base, with_scores({}, {"shake": 1.2}))
    assert shaky["crossings"] == ["b shake 0.5 -> 1.2 across filters.shake.max=1"]
    assert not shaky["within_sample_tolerances"] and not shaky["verdict_changes"]
    flipped = fast_levers.compare(cfg, base, with_scores({}, {}, verdict_b=None))
    assert flipped["verdict_changes"] == ["b"] and not flipped["within_sample_tolerances"]
    dropped = {"a": (None, {"sharpness": 300.0}), "b": base["b"]}
    assert fast_levers.compare(cfg, base, dropped)["scores_missing"] == ["brightness", "shake"]
