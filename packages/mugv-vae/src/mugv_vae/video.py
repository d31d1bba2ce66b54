"""Video decoding (PyAV) and resolution buckets: mp4 bytes -> VAE input in [-1, 1].

Tensor legend: T frames, H, W pixels, C channels.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mugv_vae.config import SPATIAL_COMPRESSION, TIME_COMPRESSION


def decode_video(
    data: bytes | str | Path, max_frames: int | None = None, where: str = "video"
) -> np.ndarray:
    """Decode the first ``max_frames`` frames of an encoded video (its bytes, or a file path)
    to RGB ``uint8 [T, H, W, 3]``. ValueError starting with ``where`` when the video has no
    video stream, cannot be decoded or has no frames. The one video decoder of mugv-vae and
    mugv-infer."""
    import av

    frames: list[np.ndarray] = []
    source = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    try:
        with av.open(source) as container:
            if not container.streams.video:
                raise ValueError(f"{where}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except av.error.FFmpegError as e:
        raise ValueError(f"{where}: cannot decode video ({e})") from None
    if not frames:
        raise ValueError(f"{where}: video has no frames")
    return np.stack(frames)


def parse_resolution(text: str) -> tuple[int, int]:
    """``"HxW"`` -> ``(H, W)``; both must be positive multiples of 8."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(
            f"resolution must look like HEIGHTxWIDTH (e.g. 256x256), got {text!r}"
        ) from None
    if h <= 0 or w <= 0 or h % SPATIAL_COMPRESSION or w % SPATIAL_COMPRESSION:
        raise ValueError(f"resolution {text!r}: height and width must be positive multiples of 8")
    return h, w


def choose_bucket(height: int, width: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest (in log space) to ``height x width``."""
    if not buckets:
        raise ValueError("no resolution buckets given")
    ratio = math.log(height / width)
    return min(buckets, key=lambda hw: abs(math.log(hw[0] / hw[1]) - ratio))


def usable_frames(available: int, requested: int) -> int:
    """Largest ``1 + 8k`` not above ``min(available, requested)``."""
    n = min(available, requested)
    if n < 1:
        raise ValueError(f"need at least 1 frame, have {available}")
    return 1 + ((n - 1) // TIME_COMPRESSION) * TIME_COMPRESSION


def to_model_input(frames_THWC: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Resize (cover, antialiased) and centre-crop uint8 frames to ``size``; return
    ``float32 [3, T, H, W]`` in [-1, 1]."""
    if frames_THWC.dtype != np.uint8 or frames_THWC.ndim != 4 or frames_THWC.shape[-1] != 3:
        raise ValueError(
            f"frames must be uint8 [T, H, W, 3], got {frames_THWC.dtype} {frames_THWC.shape}"
        )
    th, tw = size
    x_TCHW = torch.from_numpy(frames_THWC).permute(0, 3, 1, 2).float()
    h, w = x_TCHW.shape[-2:]
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    if (nh, nw) != (h, w):
        x_TCHW = F.interpolate(
            x_TCHW, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False
        )
    top, left = (nh - th) // 2, (nw - tw) // 2
    x_TCHW = x_TCHW[..., top : top + th, left : left + tw]
    x_TCHW = (x_TCHW / 127.5 - 1.0).clamp(-1.0, 1.0)
    return x_TCHW.permute(1, 0, 2, 3).contiguous()


def prepare_clip(
    raw_THWC: np.ndarray, frames: int, buckets: list[tuple[int, int]], where: str = "video"
) -> torch.Tensor:
    """Decoded uint8 frames -> ``[3, 1+8k, H, W]`` in [-1, 1] at the closest bucket; cut to
    the largest 1+8k frames up to ``frames`` (with a warning when the clip is shorter)."""
    available = raw_THWC.shape[0]
    n = usable_frames(available, frames)
    if n < frames:
        rule = f"the VAE takes 1+8k frames (the first frame, then groups of {TIME_COMPRESSION})"
        if available >= frames:  # decoding stops at `frames`: only the rule cut it
            why = f"requested {frames} is not 1+8k; {rule}, so it uses the largest 1+8k <= {frames}"
        else:
            why = f"the clip has {available} frames < requested {frames}; {rule}"
        warnings.warn(f"{where}: using {n} frames: {why}", stacklevel=2)
    size = choose_bucket(raw_THWC.shape[1], raw_THWC.shape[2], buckets)
    return to_model_input(np.ascontiguousarray(raw_THWC[:n]), size)


def load_clip(
    data: bytes,
    frames: int,
    buckets: list[tuple[int, int]],
    where: str = "video",
) -> torch.Tensor:
    """mp4 bytes -> ``[3, 1+8k, H, W]`` in [-1, 1] (see ``prepare_clip``)."""
    return prepare_clip(decode_video(data, max_frames=frames, where=where), frames, buckets, where)
