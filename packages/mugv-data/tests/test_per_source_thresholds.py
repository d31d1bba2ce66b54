"""Per-source filter overrides (keyed by a source glob) and the report's sharpness rule
(every sampled frame in range) beside our mean rule."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from mugv_data.config import SharpnessConfig, load_config
from mugv_data.per_source import SourceProcessor
from mugv_data.stages.base import Clip, ClipFrames
from mugv_data.stages.filters import SharpnessFilter
from mugv_data.synth import scene, write_video
from mugv_formats.config_loading import ConfigError
from scipy import ndimage


def laplacian_var64(g: np.ndarray) -> float:
    """float64 reference: 4-neighbour Laplacian, mirrored borders (OpenCV's reflect-101)."""
    k = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float64)
    return float(ndimage.convolve(g.astype(np.float64), k, mode="mirror").var())


def gray_clip(grays) -> Clip:
    arr = np.stack([np.repeat(g[..., None], 3, axis=2) for g in grays])
    c = Clip("k", "s", 0, 0, len(arr), 0.0, 1.0, 25.0)
    c.frames = ClipFrames(len(arr), 25.0, lambda idx: arr[list(idx)])
    return c


def test_sharpness_every_frame_rule_against_the_mean_rule():
    rng = np.random.default_rng(0)
    sharp = cv2.GaussianBlur(rng.integers(0, 256, (64, 96), dtype=np.uint8), (0, 0), 1.2)
    blurry = cv2.GaussianBlur(sharp, (0, 0), 3.0)
    frames = [sharp, blurry, sharp]  # evenly(3) of 3 frames takes all three
    v = [laplacian_var64(g) for g in frames]
    lo = (np.mean(v) + v[1]) / 2  # between the blurry frame and the mean
    mean_rule = gray_clip(frames)
    SharpnessFilter(SharpnessConfig(min=lo, max=None)).process([mean_rule])
    assert mean_rule.scores["sharpness"] == pytest.approx(np.mean(v), rel=1e-9)
    assert mean_rule.scores["sharpness_lo"] == pytest.approx(v[1], rel=1e-9)
    assert mean_rule.scores["sharpness_hi"] == pytest.approx(v[0], rel=1e-9)
    assert mean_rule.kept
    every = gray_clip(frames)
    SharpnessFilter(SharpnessConfig(min=lo, max=None, rule="every")).process([every])
    assert every.rejected_stage == "sharpness"
    assert every.reason == f"a frame's sharpness {v[1]:.4g} < min {lo:g}"
    hi = (np.mean(v) + v[0]) / 2  # too sharp a frame, mean in range
    top = gray_clip(frames)
    SharpnessFilter(SharpnessConfig(min=None, max=hi, rule="every")).process([top])
    assert top.reason == f"a frame's sharpness {v[0]:.4g} > max {hi:g}"


def test_per_source_overrides_apply_to_matching_sources_only(tmp_path):
    frames = scene(40, 144, 192, speed=2.0, seed=3)
    (tmp_path / "phone").mkdir()
    (tmp_path / "cam").mkdir()
    phone = write_video(tmp_path / "phone" / "a.mp4", frames)
    cam = write_video(tmp_path / "cam" / "a.mp4", frames)
    base = [
        "split.min_clip_s=1.0",
        "filters.text.enabled=false",
        "filters.sharpness.min=1000000",  # nothing passes by default
        "filters.sharpness.max=null",
    ]
    over = (
        'filters.per_source={"*/phone/*": {"sharpness": {"min": 1}, "static": {"enabled": false}}}'
    )
    cfg = load_config(None, overrides=[*base, over])
    proc = SourceProcessor(cfg, encode=False)
    r_phone, r_cam = proc(phone), proc(cam)
    assert [c.rejected_stage for c in r_cam.clips] == ["sharpness"]
    assert [c.rejected_stage for c in r_phone.clips] == [None]
    # the override disabled a stage for the phone source: no static score there
    assert "static_diff" in r_cam.clips[0].scores and "static_diff" not in r_phone.clips[0].scores
    # the same scores otherwise (same frames): only the verdicts differ
    assert r_phone.clips[0].scores["sharpness"] == r_cam.clips[0].scores["sharpness"]
    # the overridden stage is a copy sharing the run's stage state, built once
    assert proc.stages_for(str(phone.resolve())) is proc.stages_for(str(phone.resolve()))
    assert proc.stages_for(str(cam.resolve())) is proc.stages


def test_per_source_override_errors_name_the_glob():
    with pytest.raises(ConfigError, match=r"per_source\['\*/p/\*'\].*min=3000.0 > max=2000.0"):
        load_config(None, overrides=['filters.per_source={"*/p/*": {"sharpness": {"min": 3000}}}'])
    with pytest.raises(ConfigError, match=r"aesthetic.clip_path cannot differ per source"):
        load_config(
            None, overrides=['filters.per_source={"*/p/*": {"aesthetic": {"clip_path": "x"}}}']
        )
    with pytest.raises(ConfigError, match=r"per_source\['x'\].*sharpnes"):
        load_config(None, overrides=['filters.per_source={"x": {"sharpnes": {"min": 1}}}'])
