"""Camera shake and speed-altered / special-effects footage, from one per-pair motion track.

The MUG-V report drops camera shake, speed-altered footage and special effects with a
fine-tuned MLLM; these are the rule-based stand-ins (a learned checkpoint plugs in through
:mod:`mugv_data.stages.classifier`).

Track (:func:`motion_track`, shared by both stages and memoised per clip): ``num_pairs``
consecutive-frame pairs ``(t, t+1)`` spread evenly over the clip, gray at
``track_short_side``. For each pair: the global motion, a similarity transform fitted with
RANSAC (OpenCV ``estimateAffinePartial2D``) to Lucas-Kanade tracks of Shi-Tomasi corners
(translation ``dx, dy`` in pixels per frame, reported at ``units_short_side`` like the motion
filter); the flow magnitude, the median length of the tracked point displacements (local and
global motion); and the mean absolute frame difference (0-255).

- ``shake`` (:class:`ShakeFilter`): RMS deviation of the global velocity ``(dx, dy)`` from its
  smoothed path (centred moving average of ``smooth_pairs`` pairs, point-reflected at the ends
  so a constant or linearly changing velocity is its own smoothed path). A tripod or a smooth
  pan scores ~0; a hand-held jitter of a pixels scores ~a * sqrt(2). Keep <= max.
- ``speed_change`` (:class:`SpeedFilter`): the largest |log2| ratio between the median flow
  magnitudes of the ``window`` pairs before and after any point (plus ``eps`` px against noise
  in still footage): a 1x -> 2x speed ramp scores ~1. ``diff_spike``: the largest frame
  difference over the median one (each + 1): flashes, strobes, glitch effects. Keep each <= max.

Shape legend: P pairs; gray frames [H, W] uint8.
"""

from __future__ import annotations

import cv2
import numpy as np

from mugv_data.config import ShakeConfig, SpeedConfig
from mugv_data.stages.base import Clip, RangeFilter

TRACK_KEY = "_motion_track"


def pair_starts(num_frames: int, num_pairs: int) -> list[int]:
    """First frames of up to ``num_pairs`` consecutive pairs spread evenly over the clip."""
    last = num_frames - 2
    if last < 0:
        return []
    k = min(num_pairs, last + 1)
    if k == 1:
        return [last // 2]
    return sorted({round(j * last / (k - 1)) for j in range(k)})


def pair_motion(a_HW: np.ndarray, b_HW: np.ndarray, max_corners: int = 100):
    """(dx, dy, flow magnitude) from a to b in pixels of these frames; NaN without texture."""
    pts = cv2.goodFeaturesToTrack(a_HW, maxCorners=max_corners, qualityLevel=0.01, minDistance=4)
    if pts is None or len(pts) < 6:
        return np.nan, np.nan, np.nan
    nxt, status, _err = cv2.calcOpticalFlowPyrLK(
        a_HW, b_HW, pts, None, winSize=(11, 11), maxLevel=2
    )
    ok = status.ravel() == 1
    if ok.sum() < 6:
        return np.nan, np.nan, np.nan
    p0, p1 = pts[ok].reshape(-1, 2), nxt[ok].reshape(-1, 2)
    mag = float(np.median(np.linalg.norm(p1 - p0, axis=1)))
    m, _inliers = cv2.estimateAffinePartial2D(
        p0,
        p1,
        method=cv2.RANSAC,
        ransacReprojThreshold=1.0,
        maxIters=500,
        confidence=0.99,
        refineIters=10,
    )
    if m is None:
        return np.nan, np.nan, mag
    # translation of the frame centre (rotation/zoom about the centre stay out of dx, dy)
    h, w = a_HW.shape
    c = np.array([w / 2.0, h / 2.0])
    moved = m[:, :2] @ c + m[:, 2]
    return float(moved[0] - c[0]), float(moved[1] - c[1]), mag


def motion_track(clip: Clip, num_pairs: int, short_side: int, units_short_side: int) -> dict:
    """Per-pair arrays ``dx``, ``dy``, ``flow``, ``diff`` (float64 [P]; pixels at
    ``units_short_side``), memoised in ``clip.extra`` for the same parameters."""
    key = (num_pairs, short_side, units_short_side)
    cached = clip.extra.get(TRACK_KEY)
    if cached is not None and cached["key"] == key:
        return cached
    starts = pair_starts(clip.frames.num_frames, num_pairs)
    idx = sorted({i for s in starts for i in (s, s + 1)})
    g = dict(zip(idx, clip.frames.gray(idx, short_side), strict=True)) if idx else {}
    scale = units_short_side / min(next(iter(g.values())).shape) if g else 1.0
    rows = []
    for s in starts:
        a, b = g[s], g[s + 1]
        dx, dy, mag = pair_motion(a, b)
        diff = cv2.sumElems(cv2.absdiff(a, b))[0] / a.size
        rows.append((dx * scale, dy * scale, mag * scale, diff))
    arr = np.asarray(rows, np.float64).reshape(-1, 4)
    track = {"key": key, "dx": arr[:, 0], "dy": arr[:, 1], "flow": arr[:, 2], "diff": arr[:, 3]}
    clip.extra[TRACK_KEY] = track
    return track


def smooth_path(v_P: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average with point-reflected ends (exact on straight lines)."""
    n = len(v_P)
    h = max(0, min(window // 2, n - 1))
    if h == 0:
        return v_P.astype(np.float64)
    left = 2 * v_P[0] - v_P[h:0:-1]
    right = 2 * v_P[-1] - v_P[-2 : -h - 2 : -1]
    padded = np.concatenate([left, v_P, right])
    kernel = np.ones(2 * h + 1) / (2 * h + 1)
    return np.convolve(padded, kernel, mode="valid")


def shake_score(dx_P: np.ndarray, dy_P: np.ndarray, window: int) -> float:
    """RMS distance of the velocity track from its smoothed path (NaN pairs dropped)."""
    ok = np.isfinite(dx_P) & np.isfinite(dy_P)
    if ok.sum() < 3:
        return 0.0
    dx, dy = dx_P[ok], dy_P[ok]
    ex, ey = dx - smooth_path(dx, window), dy - smooth_path(dy, window)
    return float(np.sqrt(np.mean(ex * ex + ey * ey)))


def speed_change(flow_P: np.ndarray, window: int, eps: float) -> float:
    """max over split points of |log2(median(before) + eps) - log2(median(after) + eps)|."""
    f = flow_P[np.isfinite(flow_P)]
    if len(f) < 2 * window:
        return 0.0
    best = 0.0
    for t in range(window, len(f) - window + 1):
        before = np.median(f[t - window : t])
        after = np.median(f[t : t + window])
        best = max(best, abs(np.log2(before + eps) - np.log2(after + eps)))
    return float(best)


def diff_spike(diff_P: np.ndarray) -> float:
    """(max frame difference + 1) / (median frame difference + 1)."""
    if len(diff_P) == 0:
        return 1.0
    return float((diff_P.max() + 1.0) / (np.median(diff_P) + 1.0))


class ShakeFilter(RangeFilter):
    """Camera shake: jitter of the global motion track around its smoothed path; keep <= max."""

    name = "shake"
    score_name = "shake"
    config: ShakeConfig

    def score(self, clip: Clip) -> dict[str, float]:
        c = self.config
        tr = motion_track(clip, c.num_pairs, c.track_short_side, c.units_short_side)
        return {"shake": shake_score(tr["dx"], tr["dy"], c.smooth_pairs)}


class SpeedFilter(RangeFilter):
    """Speed-altered footage and effects: jumps of the flow magnitude (``speed_change``, keep
    <= max) and frame-difference spikes (``diff_spike``, keep <= max_diff_spike)."""

    name = "speed"
    score_name = "speed_change"
    config: SpeedConfig

    def score(self, clip: Clip) -> dict[str, float]:
        c = self.config
        tr = motion_track(clip, c.num_pairs, c.track_short_side, c.units_short_side)
        return {
            "speed_change": speed_change(tr["flow"], c.window, c.eps),
            "diff_spike": diff_spike(tr["diff"]),
        }

    def verdict(self, clip: Clip, scores: dict[str, float]) -> str | None:
        lim = self.config.max_diff_spike
        if lim is not None and scores["diff_spike"] > lim:
            return f"diff_spike {scores['diff_spike']:.4g} > max {lim:g}"
        return super().verdict(clip, scores)
