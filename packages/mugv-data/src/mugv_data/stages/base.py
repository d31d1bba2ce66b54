"""Stage framework: frozen config, declared resources, setup/process/teardown lifecycle.

A :class:`ClipStage` scores every candidate clip of one source and may reject it; the score
is always recorded (``clip.scores``), the verdict as ``(stage, reason)``. Engines call
``setup()`` once per worker, ``process()`` per source batch, ``teardown()`` at the end.

Shape legend: N frames, H, W, 3 (RGB uint8).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mugv_data.config import RangeFilterConfig


class Resources(BaseModel):
    """What one worker running the stage needs (mapped onto Ray's ``num_cpus``, ``num_gpus``
    and ``memory``; the process pool sizes itself by ``cpus`` and ``gpus``)."""

    model_config = ConfigDict(frozen=True)
    cpus: float = Field(1.0, ge=0)
    gpus: float = Field(0.0, ge=0)
    memory_mb: float = Field(0.0, ge=0)
    """Host memory one worker may use at its peak (0: not declared, no reservation)."""

    def merge(self, other: Resources) -> Resources:
        """Resources of a worker running both stages (max of each)."""
        return Resources(
            cpus=max(self.cpus, other.cpus),
            gpus=max(self.gpus, other.gpus),
            memory_mb=max(self.memory_mb, other.memory_mb),
        )


def resize_short(img: np.ndarray, short_side: int) -> np.ndarray:
    """Downscale so the short side is at most ``short_side`` (area interpolation)."""
    h, w = img.shape[:2]
    if min(h, w) <= short_side:
        return img
    s = short_side / min(h, w)
    return cv2.resize(
        img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA
    )


@dataclass
class ClipFrames:
    """Access to the analysis frames of one clip (indices relative to the clip start)."""

    num_frames: int
    fps: float
    _get: Callable[[Sequence[int]], np.ndarray]
    _gray: dict[tuple[int, int | None], np.ndarray] = field(default_factory=dict, repr=False)
    """Luma frames already computed for this clip, by (index, short side)."""
    gray_base: Callable[[int], np.ndarray] | None = field(default=None, repr=False)
    """Optional (``filters.gray_source: split``): luma of a frame at ``gray_base_side`` that
    is already at hand (the shot split's downscale); requests at that short side or below
    are downscaled from it instead of from the analysis frame's luma."""
    gray_base_side: int = 0

    def gray(self, rel_indices: Sequence[int], short_side: int | None = None) -> list[np.ndarray]:
        """uint8 [H, W] luma of the frames at ``rel_indices``; with ``short_side``, downscaled
        (area interpolation, never upscaled) so the short side is at most that.

        Memoised per clip, so the filters share one grayscale frame set: each frame is fetched,
        converted and resized once, whichever stages ask for it. With ``gray_base`` set, a
        request at a short side <= ``gray_base_side`` starts from that frame instead.
        """
        idx = [int(i) for i in rel_indices]
        missing = sorted({i for i in idx if (i, short_side) not in self._gray})
        base = self.gray_base
        if (
            missing
            and base is not None
            and short_side is not None
            and short_side <= self.gray_base_side
        ):
            for i in missing:
                if not 0 <= i < self.num_frames:
                    raise IndexError(f"clip frame index out of range [0, {self.num_frames}): {i}")
                self._gray[(i, short_side)] = resize_short(base(i), short_side)
            missing = []
        if missing:
            full = [i for i in missing if (i, None) not in self._gray]
            if full:
                for i, f in zip(full, self.get(full), strict=True):
                    self._gray[(i, None)] = cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)
            if short_side is not None:
                for i in missing:
                    self._gray[(i, short_side)] = resize_short(self._gray[(i, None)], short_side)
        return [self._gray[(i, short_side)] for i in idx]

    def get(self, rel_indices: Sequence[int]) -> np.ndarray:
        """uint8 [N, H, W, 3] frames at clip-relative indices."""
        idx = [int(i) for i in rel_indices]
        if any(not 0 <= i < self.num_frames for i in idx):
            raise IndexError(f"clip frame index out of range [0, {self.num_frames}): {idx}")
        return self._get(idx)

    def evenly(self, k: int) -> list[int]:
        """``k`` clip-relative indices spread over the clip (centres of k equal parts)."""
        k = max(1, min(k, self.num_frames))
        return [int((j + 0.5) * self.num_frames / k) for j in range(k)]


@dataclass
class Clip:
    """A candidate clip of one source moving through the stages."""

    key: str
    source: str
    index: int
    start_frame: int
    end_frame: int
    """Exclusive."""
    start_s: float
    end_s: float
    fps: float
    frames: ClipFrames | None = None
    scores: dict[str, float] = field(default_factory=dict)
    rejected_stage: str | None = None
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kept(self) -> bool:
        return self.rejected_stage is None

    @property
    def num_frames(self) -> int:
        return self.end_frame - self.start_frame

    def reject(self, stage: str, reason: str) -> None:
        """Record the first rejection (later stages still record their scores)."""
        if self.rejected_stage is None:
            self.rejected_stage, self.reason = stage, reason


class Stage(ABC):  # noqa: B024 - never instantiated directly
    """Base of every stage. Subclasses set ``name`` and take their frozen config."""

    name: ClassVar[str] = ""

    def __init__(self, config: BaseModel) -> None:
        self.config = config

    @property
    def resources(self) -> Resources:
        return Resources()

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Load models/engines once per worker."""

    def teardown(self) -> None:  # noqa: B027 - optional hook
        """Release what ``setup`` took."""


class ClipStage(Stage):
    """Scores clips of one source; ``process`` sees all candidate clips of the source."""

    short_circuit: bool = False

    @abstractmethod
    def process(self, clips: list[Clip]) -> None:
        """Record scores on ``clips`` and reject the ones that fail."""


class RangeFilter(ClipStage):
    """A clip stage whose primary score (``score_name``) must lie in [config.min, config.max]."""

    score_name: ClassVar[str] = ""
    config: RangeFilterConfig

    @abstractmethod
    def score(self, clip: Clip) -> dict[str, float]:
        """Scores of one clip; must contain ``score_name``."""

    def verdict(self, clip: Clip, scores: dict[str, float]) -> str | None:
        """Reason to reject, or None to keep."""
        v = scores[self.score_name]
        lo, hi = self.config.min, self.config.max
        if not np.isfinite(v):
            return f"{self.score_name} is {v}"
        if lo is not None and v < lo:
            return f"{self.score_name} {v:.4g} < min {lo:g}"
        if hi is not None and v > hi:
            return f"{self.score_name} {v:.4g} > max {hi:g}"
        return None

    def process(self, clips: list[Clip]) -> None:
        for clip in clips:
            if clip.frames is None or (self.short_circuit and not clip.kept):
                continue
            scores = self.score(clip)
            clip.scores.update({k: float(v) for k, v in scores.items()})
            reason = self.verdict(clip, scores)
            if reason is not None:
                clip.reject(self.name, reason)
