"""CPU scoring filters: sharpness, motion, borders/letterbox, static/frozen, brightness.

All scores are computed on the clip's analysis frames (short side <= decode.analysis_short_side).
Shape legend: N frames, H, W, 3 (RGB uint8); gray frames are [H, W].
"""

from __future__ import annotations

import itertools

import cv2
import numpy as np

from mugv_data.config import (
    BorderConfig,
    BrightnessConfig,
    MotionConfig,
    SharpnessConfig,
    StaticConfig,
)
from mugv_data.stages.base import Clip, RangeFilter, Resources


def gray(frame_HW3: np.ndarray) -> np.ndarray:
    """uint8 [H, W] luma of an RGB frame."""
    return cv2.cvtColor(frame_HW3, cv2.COLOR_RGB2GRAY)


def laplacian_variance(gray_HW: np.ndarray) -> float:
    """Variance of the 3x3 Laplacian (float64): the classic focus measure."""
    return float(cv2.Laplacian(gray_HW, cv2.CV_64F).var())


class SharpnessFilter(RangeFilter):
    """Laplacian variance over evenly spaced frames; keep within [min, max] (200, 2000).

    ``rule: mean`` (default) judges the mean of the frames; ``rule: every`` (the MUG-V
    report's rule) needs every sampled frame in range. Both record ``sharpness`` (the mean),
    ``sharpness_lo`` and ``sharpness_hi`` (lowest and highest frame)."""

    name = "sharpness"
    score_name = "sharpness"
    config: SharpnessConfig

    def score(self, clip: Clip) -> dict[str, float]:
        grays = clip.frames.gray(clip.frames.evenly(self.config.num_frames))
        v = [laplacian_variance(g) for g in grays]
        return {"sharpness": float(np.mean(v)), "sharpness_lo": min(v), "sharpness_hi": max(v)}

    def verdict(self, clip: Clip, scores: dict[str, float]) -> str | None:
        if self.config.rule == "every":
            lo, hi = self.config.min, self.config.max
            if lo is not None and scores["sharpness_lo"] < lo:
                return f"a frame's sharpness {scores['sharpness_lo']:.4g} < min {lo:g}"
            if hi is not None and scores["sharpness_hi"] > hi:
                return f"a frame's sharpness {scores['sharpness_hi']:.4g} > max {hi:g}"
        return super().verdict(clip, scores)


def flow_magnitude(a_HW: np.ndarray, b_HW: np.ndarray) -> float:
    """Mean Farneback optical-flow magnitude (pixels) from gray frame a to b."""
    flow_HW2 = cv2.calcOpticalFlowFarneback(
        a_HW,
        b_HW,
        None,
        pyr_scale=0.5,
        levels=3,
        winsize=15,
        iterations=3,
        poly_n=5,
        poly_sigma=1.2,
        flags=0,
    )
    mag_HW = cv2.magnitude(flow_HW2[..., 0], flow_HW2[..., 1])
    return float(mag_HW.mean(dtype=np.float64))


class RaftFlow:
    """torchvision RAFT on one device; mean flow magnitude of frame pairs in one batch."""

    def __init__(self, weights: str | None, small: bool, device: str) -> None:
        if not weights:
            raise ValueError(
                "filters.motion.method=raft needs filters.motion.raft_weights (a local file)"
            )
        import torch

        try:
            from torchvision.models.optical_flow import raft_large, raft_small
        except ModuleNotFoundError:
            raise ValueError(
                "filters.motion.method=raft needs torchvision: install mugv-data[raft]"
            ) from None

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("filters.motion.method=raft with device=cuda but no GPU is visible")
        self.torch = torch
        self.device = torch.device(device)
        model = raft_small() if small else raft_large()
        try:
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        except (OSError, RuntimeError) as e:
            raise ValueError(f"filters.motion.raft_weights {weights}: {e}") from e
        self.model = model.eval().to(self.device)

    def magnitudes(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[float]:
        """Mean |flow| (pixels) for RGB uint8 frame pairs of one size (multiple of 8)."""
        torch = self.torch

        def batch(frames):
            x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).to(self.device)
            return x.float() / 127.5 - 1.0

        with torch.inference_mode():
            flow_B2HW = self.model(batch([a for a, _ in pairs]), batch([b for _, b in pairs]))[-1]
        return flow_B2HW.float().norm(dim=1).mean(dim=(1, 2)).cpu().tolist()


def resize_short_multiple(img: np.ndarray, short_side: int, multiple: int = 8) -> np.ndarray:
    """Resize so the short side is at most ``short_side`` and both sides are multiples of 8."""
    h, w = img.shape[:2]
    s = min(1.0, short_side / min(h, w))
    nh, nw = (
        max(multiple, round(h * s / multiple) * multiple),
        max(multiple, round(w * s / multiple) * multiple),
    )
    if (nh, nw) == (h, w):
        return img
    return cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)


class MotionFilter(RangeFilter):
    """Mean optical-flow magnitude over 3 frame pairs (start, middle, end); keep [1, 20].

    Flow is computed at ``flow_short_side`` and reported in pixels at ``units_short_side``."""

    name = "motion"
    score_name = "motion"
    config: MotionConfig

    def __init__(self, config: MotionConfig) -> None:
        super().__init__(config)
        self._raft: RaftFlow | None = None

    @property
    def resources(self) -> Resources:
        gpu = self.config.method == "raft" and self.config.device.startswith("cuda")
        return Resources(cpus=1, gpus=0.5 if gpu else 0.0)

    def setup(self) -> None:
        if self.config.method == "raft" and self._raft is None:
            c = self.config
            self._raft = RaftFlow(c.raft_weights, c.raft_small, c.device)

    def teardown(self) -> None:
        self._raft = None

    def pairs(self, n: int) -> list[tuple[int, int]]:
        g = min(self.config.frame_gap, n - 1)
        mid = max(0, n // 2 - g // 2)
        firsts = [0, min(mid, n - 1 - g), n - 1 - g]
        return [(a, a + g) for a in firsts]

    def score(self, clip: Clip) -> dict[str, float]:
        pairs = self.pairs(clip.frames.num_frames)
        idx = sorted({i for p in pairs for i in p})
        short = self.config.flow_short_side
        if self.config.method == "raft":
            self.setup()
            frames = dict(zip(idx, clip.frames.get(idx), strict=True))
            rgb = {i: resize_short_multiple(f, short) for i, f in frames.items()}
            scale = self.config.units_short_side / min(next(iter(rgb.values())).shape[:2])
            mags = [scale * m for m in self._raft.magnitudes([(rgb[a], rgb[b]) for a, b in pairs])]
        else:
            g = dict(zip(idx, clip.frames.gray(idx, short), strict=True))
            scale = self.config.units_short_side / min(next(iter(g.values())).shape)
            mags = [scale * flow_magnitude(g[a], g[b]) for a, b in pairs]
        return {
            "motion": float(np.mean(mags)),
            "motion_start": mags[0],
            "motion_middle": mags[1],
            "motion_end": mags[2],
        }


def border_sizes(
    gray_HW: np.ndarray, luma_threshold: float, max_std: float = 6.0
) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) counts of uniform dark rows/columns at the frame edges."""
    _h, _w = gray_HW.shape
    g = gray_HW.astype(np.float32)
    row_dark = (g.mean(1) < luma_threshold) & (g.std(1) < max_std)
    col_dark = (g.mean(0) < luma_threshold) & (g.std(0) < max_std)

    def run(mask: np.ndarray) -> int:
        if mask.all():
            return len(mask)
        return int(np.argmin(mask))  # first False

    return run(row_dark), run(row_dark[::-1]), run(col_dark), run(col_dark[::-1])


class BorderFilter(RangeFilter):
    """Fraction of the frame covered by black borders (letterbox/pillarbox); keep <= max."""

    name = "borders"
    score_name = "border_ratio"
    config: BorderConfig

    def score(self, clip: Clip) -> dict[str, float]:
        grays = clip.frames.gray(clip.frames.evenly(self.config.num_frames))
        sizes = np.array([border_sizes(g, self.config.luma_threshold) for g in grays])
        t, b, lft, r = np.median(sizes, axis=0)
        h, w = grays[0].shape
        inner = max(0.0, h - t - b) * max(0.0, w - lft - r)
        return {"border_ratio": float(1.0 - inner / (h * w))}


def mean_abs_diff(a_HW: np.ndarray, b_HW: np.ndarray) -> float:
    """Mean |a - b| of two uint8 images (exact: integer sum / pixel count)."""
    return cv2.sumElems(cv2.absdiff(a_HW, b_HW))[0] / a_HW.size


class StaticFilter(RangeFilter):
    """Near-static and frozen clips.

    ``static_diff``: mean |frame difference| (0-255) between 5 frames spread over the clip
    (keep >= min); ``frozen_ratio``: share of 8 sampled consecutive pairs that are identical
    (mean |diff| < frozen_eps; keep <= max_frozen_ratio).
    """

    name = "static"
    score_name = "static_diff"
    config: StaticConfig

    def score(self, clip: Clip) -> dict[str, float]:
        n = clip.frames.num_frames
        spread = clip.frames.evenly(5)
        starts = [min(i, n - 2) for i in clip.frames.evenly(8)]
        idx = sorted(set(spread) | set(starts) | {i + 1 for i in starts})
        g = dict(zip(idx, clip.frames.gray(idx, 128), strict=True))
        spread_d = [mean_abs_diff(g[a], g[b]) for a, b in itertools.pairwise(spread) if a != b]
        pair_d = [mean_abs_diff(g[a], g[a + 1]) for a in starts]
        return {
            "static_diff": float(np.mean(spread_d)) if spread_d else 0.0,
            "frozen_ratio": float(np.mean([d < self.config.frozen_eps for d in pair_d])),
        }

    def verdict(self, clip: Clip, scores: dict[str, float]) -> str | None:
        if scores["frozen_ratio"] > self.config.max_frozen_ratio:
            return (
                f"frozen_ratio {scores['frozen_ratio']:.3g} > max {self.config.max_frozen_ratio:g}"
            )
        return super().verdict(clip, scores)


class BrightnessFilter(RangeFilter):
    """Mean luma (0-255) over evenly spaced frames; keep within [min, max]."""

    name = "brightness"
    score_name = "brightness"
    config: BrightnessConfig

    def score(self, clip: Clip) -> dict[str, float]:
        grays = clip.frames.gray(clip.frames.evenly(self.config.num_frames))
        return {"brightness": float(np.mean([g.mean() for g in grays]))}

    @property
    def resources(self) -> Resources:
        return Resources(cpus=1)
