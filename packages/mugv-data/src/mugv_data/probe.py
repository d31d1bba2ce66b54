"""Probe a video file with PyAV: size, frame rate, duration, rotation, variable frame rate.

The probe demuxes every video packet (cheap, no decoding) to get the exact frame count and
presentation timestamps, then decodes one frame to prove the stream is decodable and to read
its display rotation. Any problem raises :class:`ProbeError` with a short machine-readable
``kind`` (used in the rejects table) and a human-readable message naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from mugv_data.config import DecodeConfig


class ProbeError(ValueError):
    """A source that cannot be curated. ``kind`` is one of: zero-byte, too-large, not-a-video,
    not-a-file, audio-only, no-video-stream, corrupt, too-few-frames, too-long, decode-error."""

    def __init__(self, path: str | Path, kind: str, detail: str) -> None:
        self.path = str(path)
        self.kind = kind
        self.detail = detail
        super().__init__(f"{path}: {kind}: {detail}")


@dataclass(frozen=True)
class VideoInfo:
    """What the probe learned about one video (sizes are display sizes, after rotation)."""

    path: str
    size_bytes: int
    container: str
    codec: str
    width: int
    height: int
    coded_width: int
    coded_height: int
    rotation: int
    """Counter-clockwise degrees (0, 90, 180, 270) frames are rotated by for display."""
    fps: float
    """Average frame rate over the stream (frames / span)."""
    num_frames: int
    duration_s: float
    start_time_s: float
    """Presentation time of the first frame (non-zero on many MPEG-2 transport streams)."""
    vfr: bool
    has_audio: bool
    timestamps_s: np.ndarray = field(repr=False)
    """Presentation time of each frame, relative to the first, float64 [num_frames]."""
    pts: np.ndarray = field(repr=False)
    """Raw sorted pts of each frame (stream time base), int64 [num_frames]."""
    time_base: float = 0.0
    dominant_fps: float = 0.0
    """Rate of the most common frame interval (0.1 ms bins; a tie takes the shorter interval);
    a variable-frame-rate clip is resampled to it unless ``clip.fps`` is set."""

    def summary(self) -> dict:
        """JSON-friendly view (no per-frame arrays)."""
        return {
            "path": self.path,
            "size_bytes": self.size_bytes,
            "container": self.container,
            "codec": self.codec,
            "width": self.width,
            "height": self.height,
            "rotation": self.rotation,
            "fps": round(self.fps, 6),
            "num_frames": self.num_frames,
            "duration_s": round(self.duration_s, 6),
            "start_time_s": round(self.start_time_s, 6),
            "vfr": self.vfr,
            "dominant_fps": round(self.dominant_fps, 6),
            "has_audio": self.has_audio,
        }


def _normalise_rotation(deg: float) -> int:
    r = round(deg / 90.0) * 90 % 360
    return r


def probe_video(path: str | Path, config: DecodeConfig | None = None) -> VideoInfo:
    """Probe ``path``; raise :class:`ProbeError` for anything that cannot be curated."""
    config = config or DecodeConfig()
    path = Path(path)
    if not path.is_file():
        what = (
            "a directory"
            if path.is_dir()
            else "a symlink loop or dangling symlink"
            if path.is_symlink()
            else "not a regular file"
        )
        raise ProbeError(path, "not-a-file", f"{what}, not a video file")
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise ProbeError(path, "not-a-video", f"cannot stat: {e}") from e
    if size == 0:
        raise ProbeError(path, "zero-byte", "file is empty")
    if size > config.max_file_bytes:
        raise ProbeError(
            path, "too-large", f"{size} bytes > decode.max_file_bytes={config.max_file_bytes}"
        )
    try:
        container = av.open(str(path), mode="r")
    except Exception as e:  # PyAV raises many FFmpeg error subclasses
        raise ProbeError(path, "not-a-video", f"cannot open container: {e}") from e
    try:
        vstreams = list(container.streams.video)
        has_audio = len(container.streams.audio) > 0
        if not vstreams:
            kind = "audio-only" if has_audio else "no-video-stream"
            raise ProbeError(path, kind, "container has no video stream")
        stream = vstreams[0]
        codec = stream.codec_context.name if stream.codec_context else "unknown"
        if stream.time_base is None:
            raise ProbeError(path, "corrupt", "video stream has no time base")
        tb = float(stream.time_base)
        pts_list: list[int] = []
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.pts is None:
                    continue
                pts_list.append(int(packet.pts))
        except Exception as e:
            raise ProbeError(
                path, "corrupt", f"demux failed after {len(pts_list)} packets: {e}"
            ) from e
        if not pts_list:
            raise ProbeError(path, "too-few-frames", "no video packets")
        pts = np.unique(np.asarray(pts_list, dtype=np.int64))
        container.seek(int(pts[0]), stream=stream, backward=True, any_frame=False)
        rotation, coded_w, coded_h = _first_frame(container, stream, path)
    finally:
        container.close()
    n = len(pts)
    ts = (pts - pts[0]).astype(np.float64) * tb
    if n < 2:
        raise ProbeError(path, "too-few-frames", f"{n} frame(s)")
    dt = np.diff(ts)
    if np.any(dt <= 0):
        raise ProbeError(path, "corrupt", "non-increasing frame timestamps")
    mean_dt = float(dt.mean())
    fps = 1.0 / mean_dt
    vfr = bool(n > 2 and float(dt.std()) / mean_dt > config.vfr_tolerance)
    bins, counts = np.unique(np.round(dt, 4), return_counts=True)  # sorted: ties -> shorter
    dominant_dt = float(bins[int(np.argmax(counts))])
    dominant_fps = 1.0 / dominant_dt if dominant_dt > 0 else fps
    duration = float(ts[-1] + mean_dt)
    if duration > config.max_duration_s:
        raise ProbeError(
            path, "too-long", f"{duration:.1f} s > decode.max_duration_s={config.max_duration_s}"
        )
    w, h = (coded_h, coded_w) if rotation in (90, 270) else (coded_w, coded_h)
    return VideoInfo(
        path=str(path.resolve()),
        size_bytes=size,
        container=container.format.name,
        codec=codec,
        width=w,
        height=h,
        coded_width=coded_w,
        coded_height=coded_h,
        rotation=rotation,
        fps=fps,
        num_frames=n,
        duration_s=duration,
        start_time_s=float(pts[0]) * tb,
        vfr=vfr,
        has_audio=has_audio,
        timestamps_s=ts,
        pts=pts,
        time_base=tb,
        dominant_fps=dominant_fps,
    )


def _first_frame(container, stream, path: Path) -> tuple[int, int, int]:
    """Decode the first frame: returns (rotation, coded width, coded height)."""
    try:
        for frame in container.decode(stream):
            rot = getattr(frame, "rotation", 0) or 0
            return _normalise_rotation(float(rot)), int(frame.width), int(frame.height)
    except Exception as e:
        raise ProbeError(path, "decode-error", f"first frame does not decode: {e}") from e
    raise ProbeError(path, "decode-error", "no frame decodes")
