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
