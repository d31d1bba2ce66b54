"""Step-cache calibration (mugv_infer.cache_calibration): the curve measured on a tiny
pipeline against exact runs computed here, the threshold choice, the calibration file."""

from __future__ import annotations

import json

import pytest
import torch


def _point(thr, rel):
    from mugv_infer.cache_calibration import CurvePoint

    return CurvePoint(thr, [0], [rel], [0.0], 1.0)


def test_choice_is_the_largest_threshold_before_the_bound_is_crossed():
    from mugv_infer.cache_calibration import choose_threshold

    curve = [_point(0.1, 0.01), _point(0.3, 0.2), _point(0.2, 0.04), _point(0.4, 0.03)]
    assert choose_threshold(curve, 0.05) == 0.2  # 0.4 is back under, past a failure: not taken
    assert choose_threshold(curve, 0.005) == 0.0
    assert choose_threshold([_point(0.1, float("nan"))], 0.05) == 0.0


def test_calibration_curve_on_a_tiny_pipeline(pipe, call_kwargs, tmp_path):
    from mugv_infer.cache_calibration import (
        calibrate,
        read_threshold,
        step_cache_threshold,
        write_calibration,
    )
    from mugv_infer.config import RuntimeConfig

    prompts = ["a cat walks on the grass", "a red car drives fast at night"]
    kw = {**call_kwargs, "num_inference_steps": 4, "output_type": "latent"}

    def generate(i, thr):
        out = pipe(prompts[i], generator=torch.Generator().manual_seed(i), **kw,
                   step_cache_threshold=thr)  # fmt: skip
        return out.frames, out.step_cache_skipped

    seen = []
    cal = calibrate(generate, 2, 4, thresholds=[100.0, 1.0], max_rel_l2=0.5,
                    on_point=lambda exact_s, p: seen.append((exact_s, p.threshold)))  # fmt: skip
    assert [t for _, t in seen] == [1.0, 100.0]  # each point reported as measured, in order
    assert all(s == cal.exact_seconds > 0 for s, _ in seen)
    by_thr = {p.threshold: p for p in cal.curve}
    # the deviation, recomputed here from runs of our own
    exact = generate(1, 0.0)[0]
    cached, skipped = generate(1, 100.0)
    rel = float((cached - exact).norm() / exact.norm())
    assert by_thr[100.0].skipped_steps[1] == skipped == 3  # all but the warm-up step
    assert by_thr[100.0].rel_l2[1] == pytest.approx(rel, rel=1e-6)
    assert by_thr[100.0].rel_l2[1] > 0
    assert [p.threshold for p in cal.curve] == [1.0, 100.0]
    skips = [sum(p.skipped_steps) for p in cal.curve]
    assert skips == sorted(skips)  # a larger threshold never skips fewer steps
    expected = 0.0
    for p in cal.curve:
        if max(p.rel_l2) > 0.5:
            break
        expected = p.threshold
    assert cal.threshold == expected
    path = write_calibration(cal, tmp_path / "cal.json")
    assert json.loads(path.read_text())["curve"][1]["worst_rel_l2"] == max(by_thr[100.0].rel_l2)
    assert read_threshold(path) == cal.threshold
    rt = RuntimeConfig(step_cache_calibration=path, step_cache_threshold=0.7)
    assert step_cache_threshold(rt) == cal.threshold
    assert step_cache_threshold(RuntimeConfig(step_cache_threshold=0.7)) == 0.7


def test_bad_calibration_files_are_named(tmp_path):
    from mugv_infer.cache_calibration import read_threshold

    bad = tmp_path / "x.json"
    bad.write_text('{"kind": "something else", "threshold": 0.1}')
    with pytest.raises(ValueError, match="x.json: not a"):
        read_threshold(bad)
    bad.write_text('{"kind": "mugv-infer.step-cache-calibration", "threshold": -1}')
    with pytest.raises(ValueError, match="threshold -1"):
        read_threshold(bad)
    with pytest.raises(ValueError, match="cannot read"):
        read_threshold(tmp_path / "missing.json")


def test_calibrate_cache_command(parts, tmp_path, capsys):
    from mugv_infer.cache_calibration import CALIBRATION_KIND
    from mugv_infer.cli import main

    out = tmp_path / "cal.json"
    args = [
        "calibrate-cache", "--model", str(parts["model"]), "--vae", str(parts["vae"]),
        "--text-encoder", str(parts["t5"]), "--prompt", "a cat", "--resolution", "32x32",
        "--frames", "9", "--steps", "3", "--thresholds", "100", "--max-rel-l2", "10",
        "--out", str(out), "--set", "runtime.dtype=float32",
    ]  # fmt: skip
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    data = json.loads(out.read_text())
    assert data["kind"] == CALIBRATION_KIND and data["threshold"] == printed["threshold"] == 100.0
    assert data["curve"][0]["skipped_steps"] == [2]
    assert out.with_name("cal.resolved.yaml").is_file()
    # an existing file: refused before any model loads unless --overwrite; never a foreign one
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    foreign = tmp_path / "notes.json"
    foreign.write_text("{}")
    assert main([*args[:-3], str(foreign), *args[-2:], "--overwrite"]) == 2
    assert "not a calibration file" in capsys.readouterr().err
    assert foreign.read_text() == "{}"
