"""The mp4 writer: frames chosen for frame-rate normalisation, H.264/MP4 encoding (PyAV)."""

from __future__ import annotations

import io
from collections.abc import Iterable
from fractions import Fraction

import av
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


def encode_mp4(
    frames: Iterable[np.ndarray],
    fps: float,
    *,
    width: int,
    height: int,
    codec: str = "libx264",
    crf: int = 20,
    preset: str = "veryfast",
    threads: int = 1,
) -> bytes:
    """Encode RGB uint8 [H, W, 3] frames (resized to width x height if needed) into MP4 bytes."""
    buf = io.BytesIO()
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": preset, "threads": str(max(1, threads))}
        n = 0
        for frame_HW3 in frames:
            if frame_HW3.shape[0] != height or frame_HW3.shape[1] != width:
                frame_HW3 = cv2.resize(frame_HW3, (width, height), interpolation=cv2.INTER_AREA)
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_HW3), format="rgb24")
            vf.pts = n
            for packet in stream.encode(vf):
                container.mux(packet)
            n += 1
        if n == 0:
            raise ValueError("encode_mp4: no frames")
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()
