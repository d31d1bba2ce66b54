"""Frames for a kept clip: chosen for frame-rate normalisation and resized to the output size.

They are encoded by the one mp4 writer, :func:`mugv_formats.video.encode_mp4`, as I420 planes
converted here (:func:`i420`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import cv2
import numpy as np


def resample_indices(timestamps_s: np.ndarray, start: int, end: int, fps: float) -> np.ndarray:
    """Source frame indices in [start, end) for a constant-rate clip at ``fps``.

    Output frame j sits at t0 + j / fps (t0 = time of frame ``start``); it takes the nearest
    source frame at or before that time. Works for variable-frame-rate sources.
    """
    ts = timestamps_s[start:end]
    t0 = ts[0]
    span = ts[-1] - t0 + (ts[-1] - ts[-2] if len(ts) > 1 else 1.0 / fps)
    n_out = max(1, int(np.floor(span * fps + 1e-6)))
    want = t0 + np.arange(n_out) / fps
    pos = np.searchsorted(ts, want + 1e-9, side="right") - 1
    return start + np.clip(pos, 0, len(ts) - 1)


def resized(frames: Iterable[np.ndarray], width: int, height: int) -> Iterator[np.ndarray]:
    """RGB uint8 ``[H, W, 3]`` frames at ``width x height`` (area-interpolated where needed)."""
    for frame_HW3 in frames:
        if frame_HW3.shape[0] != height or frame_HW3.shape[1] != width:
            frame_HW3 = cv2.resize(frame_HW3, (width, height), interpolation=cv2.INTER_AREA)
        yield frame_HW3


def i420(frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """RGB uint8 ``[H, W, 3]`` (H, W even) -> I420 planes ``[H * 3 // 2, W]`` for
    ``encode_mp4(..., frame_format="yuv420p")``, BT.601 limited range (the matrix and range of
    swscale's default rgb24 -> yuv420p) at about a third of its cost. Chroma is the mean of
    each 2x2 block: OpenCV's I420 conversion takes the block's top-left pixel, so the chroma
    planes are converted from the area-downscaled frame placed at the top-left pixel of each
    2x2 block (the other pixels of that buffer are never read: only its chroma is kept)."""
    blocks: np.ndarray | None = None
    for frame_HW3 in frames:
        h, w = frame_HW3.shape[:2]
        out = cv2.cvtColor(frame_HW3, cv2.COLOR_RGB2YUV_I420)
        half = cv2.resize(frame_HW3, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        if blocks is None or blocks.shape != frame_HW3.shape:
            blocks = np.zeros_like(frame_HW3)
        # even rows: each half pixel twice (OpenCV reads only the even columns of even rows)
        blocks[::2] = cv2.resize(half, (w, h // 2), interpolation=cv2.INTER_NEAREST)
        out[h:] = cv2.cvtColor(blocks, cv2.COLOR_RGB2YUV_I420)[h:]
        yield out
