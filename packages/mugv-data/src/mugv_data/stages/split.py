"""Shot splitting: hard cuts (PySceneDetect Content/Adaptive detector), fades (PySceneDetect
ThresholdDetector) and dissolves (twin comparison with a blend check), then clips.

Frames are fed one by one (our own decoder, at ``split.detect_short_side``) so PySceneDetect
is used only for its detectors. A transition is an excluded frame span ``[a, b)``; a hard cut
at frame t is the empty span ``[t, t)``. Shots are the complement of the transitions.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import cv2
import numpy as np

from mugv_data.config import SplitConfig
from mugv_data.stages.base import Resources, Stage


def color_histogram(frame_HW3: np.ndarray) -> np.ndarray:
    """Normalised 8x8x8 RGB histogram [512] of a 64x48 version of the frame."""
    small = cv2.resize(frame_HW3, (64, 48), interpolation=cv2.INTER_AREA)
    h = cv2.calcHist([small], [0, 1, 2], None, [8, 8, 8], [0, 256] * 3).ravel()
    return h / max(h.sum(), 1.0)


def hist_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Total-variation distance of two normalised histograms, in [0, 1]."""
    return 0.5 * float(np.abs(a - b).sum())


class DissolveDetector:
    """Gradual-transition detector: twin comparison (Zhang et al. 1993) on colour histograms.

    Histograms barely change under camera motion but drift steadily through a dissolve or a
    fade. A candidate starts when the frame-to-frame histogram distance rises above ``low``
    and ends when it falls back; it is a gradual transition when it lasts >= ``min_len``
    frames, its endpoints are >= ``high`` apart and the distance from its first frame grows
    monotonically through it (checked at 1/3, 2/3 and the end) with no single step doing
    most of the change (that would be a hard cut).
    """

    def __init__(self, low: float, high: float, min_len: int, max_len: int = 120) -> None:
        self.low, self.high, self.min_len, self.max_len = low, high, min_len, max_len
        self.spans: list[tuple[int, int]] = []
        self._prev: np.ndarray | None = None
        self._cand: list[np.ndarray] = []
        self._cand_start = -1

    def process(self, t: int, frame_HW3: np.ndarray) -> None:
        h = color_histogram(frame_HW3)
        if self._prev is None:
            self._prev = h
            return
        if hist_distance(h, self._prev) > self.low:
            if not self._cand:
                self._cand_start = t
                self._cand = [self._prev]
            self._cand.append(h)
            if len(self._cand) > self.max_len:
                self._cand = []
        elif self._cand:
            self._close(t)
        self._prev = h

    def _close(self, t: int) -> None:
        hs = self._cand
        self._cand = []
        if len(hs) - 1 < self.min_len:
            return
        d = [hist_distance(hs[0], hs[i]) for i in (len(hs) // 3, (2 * len(hs)) // 3, len(hs) - 1)]
        steps = [hist_distance(a, b) for a, b in itertools.pairwise(hs)]
        gradual = max(steps) < 0.6 * d[-1]  # no single step does most of the change
        monotone = d[0] <= d[1] + 0.02 and d[1] <= d[2] + 0.02
        if d[-1] >= self.high and gradual and monotone:
            self.spans.append((self._cand_start, t))

    def finish(self, t: int) -> None:
        if self._cand:
            self._close(t)


@dataclass(frozen=True)
class Shot:
    start: int
    end: int
    """Exclusive."""


def merge_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort and merge overlapping/touching transition spans."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def shots_from_spans(num_frames: int, spans: list[tuple[int, int]], trim: int) -> list[Shot]:
    """Complement of the transition spans, each shot trimmed by ``trim`` frames per side
    (never trimming the very first or last frame of the video)."""
    shots = []
    pos = 0
    for a, b in [*merge_spans(spans), (num_frames, num_frames)]:
        s = pos + (trim if pos > 0 else 0)
        e = a - (trim if a < num_frames else 0)
        if e > s:
            shots.append(Shot(s, e))
        pos = max(pos, b)
    return shots


class _FastHsvScore:
    """Mixin for PySceneDetect's Content/Adaptive detectors: the per-frame score computed
    with OpenCV (``absdiff`` + ``sumElems`` on the HSV frame) instead of numpy int32 copies.

    Same definition and same float operations as ``ContentDetector._calculate_frame_score``
    (mean |delta| of hue, saturation, luma, weighted mean), so scores are bit-identical
    (tested); ~4x cheaper per frame. Falls back to the library code whenever edges or a stats
    manager are involved.
    """

    def _calculate_frame_score(self, frame_num: int, frame_img: np.ndarray) -> float:
        weights = getattr(self, "_weights", None)
        if weights is None or weights.delta_edges > 0.0 or self.stats_manager is not None:
            return super()._calculate_frame_score(frame_num, frame_img)
        hsv_HW3 = cv2.cvtColor(frame_img, cv2.COLOR_BGR2HSV)
        last = getattr(self, "_mugv_last_hsv", None)
        self._mugv_last_hsv = hsv_HW3
        if last is None:
            return 0.0
        num_pixels = float(hsv_HW3.shape[0] * hsv_HW3.shape[1])
        sums = cv2.sumElems(cv2.absdiff(hsv_HW3, last))  # exact integer sums (float64)
        components = (sums[0] / num_pixels, sums[1] / num_pixels, sums[2] / num_pixels, 0.0)
        return sum(c * w for c, w in zip(components, weights, strict=True)) / sum(
            abs(w) for w in weights
        )


class _FrameMean:
    """The frame metric PySceneDetect's ThresholdDetector reads from a stats manager when one
    holds it: the mean of the current frame, set before each ``process_frame`` call.

    ThresholdDetector computes ``numpy.mean(frame)`` per frame otherwise (~0.7 ms at 256x144:
    a float64 copy). ``sum(cv2.sumElems(frame)[:3]) / frame.size`` is the same number (the
    channel sums are exact integers in float64, as are numpy's partial sums, so both are one
    correctly rounded division of the same integer; tested) at ~1 % of the cost. Only the
    current frame is held (a real StatsManager keeps every frame's metrics)."""

    def __init__(self) -> None:
        self.frame = -1
        self.value = 0.0

    def set(self, frame_num: int, bgr_HW3: np.ndarray) -> None:
        self.frame = frame_num
        self.value = sum(cv2.sumElems(bgr_HW3)[:3]) / bgr_HW3.size

    def metrics_exist(self, frame_num: int, metric_keys) -> bool:
        return frame_num == self.frame

    def get_metrics(self, frame_num: int, metric_keys) -> list[float]:
        return [self.value]

    def set_metrics(self, frame_num: int, metrics) -> None:
        pass


class ShotSplitter(Stage):
    """Detects transitions over every frame of a source and returns the shots."""

    name = "split"
    config: SplitConfig

    @property
    def resources(self) -> Resources:
        return Resources(cpus=1)

    def _detectors(self):
        from scenedetect.detectors import ThresholdDetector

        c = self.config
        dets = []
        adaptive, content = _fast_detector_classes()
        if c.adaptive:
            dets.append(adaptive(min_scene_len=c.min_scene_frames))
        else:
            dets.append(content(threshold=c.content_threshold, min_scene_len=c.min_scene_frames))
        if c.fade_threshold > 0:
            fade = ThresholdDetector(threshold=c.fade_threshold, min_scene_len=c.min_scene_frames)
            fade.stats_manager = _FrameMean()
            dets.append(fade)
        return dets

    def detect(self, frames_iter, num_frames: int, on_small=None) -> tuple[list[Shot], dict]:
        """Feed RGB frames [H, W, 3] (any size; resized to detect_short_side) in order.

        Returns the shots and a summary (cut frames, dissolve spans). ``on_small(t, rgb)``,
        when given, sees every frame at ``detect_short_side`` (the RGB frame the detectors
        use), so other stages can reuse the downscale.
        """
        c = self.config
        dets = self._detectors()
        dissolve = (
            DissolveDetector(c.dissolve_low, c.dissolve_high, c.dissolve_window)
            if c.dissolve
            else None
        )
        cuts: set[int] = set()
        n = 0
        for t, frame_HW3 in enumerate(frames_iter):
            small = _resize_short(frame_HW3, c.detect_short_side)
            if on_small is not None:
                on_small(t, small)
            bgr = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
            for d in dets:
                if isinstance(d.stats_manager, _FrameMean):
                    d.stats_manager.set(t, bgr)
                cuts.update(int(x) for x in d.process_frame(t, bgr))
            if dissolve is not None:
                dissolve.process(t, small)
            n = t + 1
        for d in dets:
            cuts.update(int(x) for x in d.post_process(n))
        if dissolve is not None:
            dissolve.finish(n)
        if n != num_frames:
            raise RuntimeError(f"decoded {n} frames, expected {num_frames}")
        cuts = {x for x in cuts if 0 < x < n}
        dissolves = dissolve.spans if dissolve is not None else []
        spans = [(x, x) for x in cuts] + list(dissolves)
        shots = shots_from_spans(n, spans, c.trim_frames)
        return shots, {"cuts": sorted(cuts), "dissolves": [list(s) for s in dissolves]}

    def clip_spans(
        self, shot: Shot, timestamps_s: np.ndarray, fps: float
    ) -> list[tuple[int, int, str | None]]:
        """Cut a shot into clips of at most ``max_clip_s``: ``(start, end, reject_reason)``
        per span; spans shorter than ``min_clip_s`` (a short shot, or the tail of a long one)
        carry the reason they are dropped."""
        c = self.config
        max_n = max(1, int(np.floor(c.max_clip_s * fps + 1e-6)))
        min_n = int(np.ceil(c.min_clip_s * fps - 1e-6))
        whole = shot.end - shot.start < min_n
        out: list[tuple[int, int, str | None]] = []
        for a in range(shot.start, shot.end, max_n):
            b = min(a + max_n, shot.end)
            why = None
            if b - a < min_n:
                what = "shot" if whole else "tail of shot"
                why = f"{what} {(b - a) / fps:.2f} s < split.min_clip_s {c.min_clip_s:g}"
            out.append((a, b, why))
        return out


def _fast_detector_classes():
    """(AdaptiveDetector, ContentDetector) with the OpenCV frame score (imported lazily)."""
    global _FAST_CLASSES
    if _FAST_CLASSES is None:
        from scenedetect.detectors import AdaptiveDetector, ContentDetector

        _FAST_CLASSES = (
            type("FastAdaptiveDetector", (_FastHsvScore, AdaptiveDetector), {}),
            type("FastContentDetector", (_FastHsvScore, ContentDetector), {}),
        )
    return _FAST_CLASSES


_FAST_CLASSES = None


def _resize_short(img: np.ndarray, short_side: int) -> np.ndarray:
    h, w = img.shape[:2]
    if min(h, w) <= short_side:
        return img
    s = short_side / min(h, w)
    return cv2.resize(
        img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_LINEAR
    )
