"""Frames and videos of the umbrella's glue (recon, first frame, memorisation check).

Pixels in a stage's tensors are float ``[-1, 1]`` ``[C, T, H, W]``; files hold uint8
``[T, H, W, 3]``. Videos are H.264 mp4 (yuv420p, browser-playable), written atomically.
"""

from __future__ import annotations

from pathlib import Path

import mugv_formats.video
import numpy as np

FPS = 8.0
"""Frame rate of the report's short videos."""


def to_uint8(video_CTHW: np.ndarray) -> np.ndarray:
    """[-1, 1] float [3, T, H, W] -> uint8 [T, H, W, 3]."""
    x = (np.clip(video_CTHW, -1, 1) + 1) * 127.5
    return np.round(x).astype(np.uint8).transpose(1, 2, 3, 0)


def write_mp4(frames_THW3: np.ndarray, path: Path, fps: float = FPS) -> Path:
    """uint8 frames -> H.264 mp4 (crf 18), written atomically; an odd size loses a pixel; the
    same frames give the same bytes (``deterministic``: x264's mb-tree off)."""
    return mugv_formats.video.write_mp4(
        frames_THW3, path, fps, crf=18, preset="veryfast", deterministic=True
    )
