"""Camera shake and speed/effects stages: synthetic clips with known answers (a still image
panned with and without jitter, a speed ramp, a flash) and the real sample clips."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from mugv_data.config import ShakeConfig, SpeedConfig, load_config
from mugv_data.per_source import SourceProcessor
from mugv_data.stages.base import Clip, ClipFrames
from mugv_data.stages.camera import (
    ShakeFilter,
    SpeedFilter,
    diff_spike,
    pair_starts,
    shake_score,
    smooth_path,
    speed_change,
)
from mugv_data.synth import scene

H, W = 180, 320


def as_clip(frames, fps=25.0) -> Clip:
    arr = np.stack(frames)
    c = Clip("k", "s", 0, 0, len(arr), 0.0, len(arr) / fps, fps)
    c.frames = ClipFrames(len(arr), fps, lambda idx: arr[list(idx)])
    return c


def pan(speeds, jitter=0.0, seed=0):
    """A still image seen through a window moving right by ``speeds[t]`` px per frame, plus a
    uniform random offset in [-jitter, jitter] px per frame (hand-held shake)."""
    rng = np.random.default_rng(seed)
    pos = np.concatenate([[0.0], np.cumsum(speeds)])
    big = scene(1, H + 40, W + int(pos.max()) + 60, speed=0, seed=seed)[0]
    out = []
    for x in pos:
        jx, jy = rng.uniform(-jitter, jitter, 2) if jitter else (0.0, 0.0)
        m = np.float32([[1, 0, -(x + 20 + jx)], [0, 1, -(20 + jy)]])
        out.append(cv2.warpAffine(big, m, (W, H), flags=cv2.INTER_LINEAR))
    return out


def run(clip):
    ShakeFilter(ShakeConfig()).process([clip])
    SpeedFilter(SpeedConfig()).process([clip])
    return clip


def test_pan_without_jitter_is_steady_and_with_jitter_is_shake():
    steady = run(as_clip(pan([2.0] * 60)))
    shaky = run(as_clip(pan([2.0] * 60, jitter=2.5)))
    assert steady.kept and steady.scores["shake"] < 0.1
    # uniform jitter of +-2.5 px at 180p is ~3.6 px at 256p: velocity RMS ~4, smoothing keeps most
    assert shaky.scores["shake"] > 2.0
    assert shaky.rejected_stage == "shake" and "shake" in shaky.reason
    still = run(as_clip(pan([0.0] * 40)))
    assert still.kept and still.scores["shake"] == pytest.approx(0.0, abs=0.05)


def test_speed_ramp_is_rejected_and_constant_or_smooth_speed_kept():
    ramp = run(as_clip(pan([1.5] * 30 + [4.5] * 30)))  # 1x -> 3x
    assert ramp.rejected_stage == "speed"
    # a 3x ramp: log2 ratio of the median flows ~ log2((4.5 s + eps) / (1.5 s + eps))
    s = 256 / H
    want = np.log2((4.5 * s + 0.5) / (1.5 * s + 0.5))
    assert ramp.scores["speed_change"] == pytest.approx(want, rel=0.1)
    const = run(as_clip(pan([3.0] * 50)))
    assert const.kept and const.scores["speed_change"] < 0.05
    accel = run(as_clip(pan(list(np.linspace(1.0, 3.0, 60)))))
    assert accel.kept, accel.reason


def test_flash_frame_is_an_effect():
    frames = pan([2.0] * 50)
    steady = as_clip(frames)
    frames = list(frames)
    frames[25] = np.full_like(frames[25], 250)  # one white frame
    c = as_clip(frames)
    cfg = SpeedConfig(num_pairs=50, max_diff_spike=4.0)  # every pair: the flash is in two
    SpeedFilter(cfg).process([c, steady])
    assert steady.kept and steady.scores["diff_spike"] < 1.5
    assert c.scores["diff_spike"] > 4.0 and c.rejected_stage == "speed"
    assert "diff_spike" in c.reason


def test_track_math_against_closed_forms():
    t = np.arange(20, dtype=np.float64)
    line = 3.0 + 0.5 * t
    assert np.allclose(smooth_path(line, 5), line)  # straight lines are their own path
    # alternating +-a velocity around a constant: RMS deviation -> a (away from the ends)
    a = 0.8
    v = 2.0 + a * (-1.0) ** t
    inner = v - smooth_path(v, 5)
    assert np.allclose(inner[3:-3], a * (-1.0) ** t[3:-3] * (1 - 1 / 5))
    assert shake_score(v, np.zeros_like(v), 5) == pytest.approx(
        np.sqrt(np.mean(inner**2)), rel=1e-12
    )
    step = np.r_[np.full(10, 1.0), np.full(10, 7.0)]
    assert speed_change(step, 6, 0.5) == pytest.approx(np.log2(7.5 / 1.5))
    assert speed_change(np.full(20, 3.0), 6, 0.5) == 0.0
    assert diff_spike(np.array([1.0, 1.0, 1.0, 19.0])) == pytest.approx(20.0 / 2.0)
    assert pair_starts(1, 5) == [] and pair_starts(2, 5) == [0]
    assert pair_starts(11, 3) == [0, 4, 9]


def test_real_samples_keep_what_they_kept(samples):
    """The shake/speed stages reject no sample clip; the kept set is the one before them."""
    cfg = load_config(
        __import__("pathlib").Path(__file__).parents[1] / "configs" / "demo.yaml",
        overrides=["filters.text.enabled=false"],
    )
    proc = SourceProcessor(cfg, encode=False)
    kept = set()
    for name in ("bikes.mp4", "carphone_pristine.mp4"):
        res = proc(samples / name)
        for c in res.clips:
            if c.rejected_stage != "split":
                assert {"shake", "speed_change", "diff_spike"} <= set(c.scores)
            assert c.rejected_stage not in ("shake", "speed"), (name, c.reason)
            if c.kept:
                kept.add((name, c.index))
    assert kept == {("bikes.mp4", 3), ("bikes.mp4", 4), ("carphone_pristine.mp4", 0)}


def test_fewer_pairs_keep_the_known_answers():
    """The opt-in cheaper track (12 pairs, speed window 3: README "Faster CPU settings") still
    separates jitter from a smooth pan and a speed ramp from constant speed."""
    shake, speed = ShakeConfig(num_pairs=12), SpeedConfig(num_pairs=12, window=3)

    def run12(clip):
        ShakeFilter(shake).process([clip])
        SpeedFilter(speed).process([clip])
        return clip

    steady = run12(as_clip(pan([2.0] * 60)))
    shaky = run12(as_clip(pan([2.0] * 60, jitter=2.5)))
    assert steady.kept and steady.scores["shake"] < 0.1
    assert shaky.scores["shake"] > 2.0 and shaky.rejected_stage == "shake"
    ramp = run12(as_clip(pan([1.5] * 30 + [4.5] * 30)))
    s = 256 / H
    assert ramp.rejected_stage == "speed"
    assert ramp.scores["speed_change"] == pytest.approx(
        np.log2((4.5 * s + 0.5) / (1.5 * s + 0.5)), rel=0.1
    )
    const = run12(as_clip(pan([3.0] * 50)))
    assert const.kept and const.scores["speed_change"] < 0.05
