"""Small synthetic videos (textures, cuts, dissolves) for tests, benchmarks and demos."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np


def texture(h: int, w: int, seed: int = 0, blur: float = 1.0) -> np.ndarray:
    """A detailed RGB texture (uint8 [h, w, 3])."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.GaussianBlur(img, (0, 0), blur) if blur > 0 else img


def write_video(
    path: Path,
    frames,
    fps: float = 25.0,
    *,
    codec: str = "libx264",
    fmt: str | None = None,
    rotation: int | None = None,
    pts: list[int] | None = None,
    time_base: Fraction | None = None,
) -> Path:
    """Encode RGB uint8 frames [H, W, 3] to ``path``; optional display rotation / custom pts."""
    import av

    frames = list(frames)
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            s.options = {"crf": "18", "preset": "ultrafast", "bf": "0"}
        if time_base is not None:
            s.codec_context.time_base = time_base
        if rotation is not None:
            s.set_display_rotation(rotation)
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            if pts is not None:
                vf.pts = pts[i]
                vf.time_base = time_base
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def moving_texture(
    n: int, h: int = 96, w: int = 128, speed: float = 2.0, seed: int = 0
) -> list[np.ndarray]:
    """Frames of a texture translating right by ``speed`` px/frame."""
    big = texture(h, w + int(np.ceil(speed * n)) + 2, seed)
    return [np.ascontiguousarray(big[:, round(i * speed) : round(i * speed) + w]) for i in range(n)]


def scene(n: int, h: int = 96, w: int = 128, speed: float = 1.5, seed: int = 0) -> list[np.ndarray]:
    """A smooth, tinted, detailed "scene" panning right by ``speed`` px/frame: distinct seeds
    give visibly different shots (colour and layout), like real footage."""
    rng = np.random.default_rng(seed)
    width = w + int(np.ceil(speed * n)) + 2
    base = rng.standard_normal((h, width)).astype(np.float32)
    low = cv2.GaussianBlur(base, (0, 0), 6.0)
    low = (low - low.mean()) / (low.std() + 1e-6)
    fine = cv2.GaussianBlur(rng.standard_normal((h, width)).astype(np.float32), (0, 0), 0.6)
    tint = rng.uniform(40, 215, 3).astype(np.float32)
    img = tint[None, None, :] + 45.0 * low[..., None] + 25.0 * fine[..., None]
    img = np.clip(img, 0, 255).astype(np.uint8)
    # a steady pan: sub-pixel offsets by linear interpolation (an integer crop at
    # round(i * speed) would step unevenly, 1 then 2 px at 1.5 px/frame: a jittered camera)
    return [
        cv2.warpAffine(
            img, np.float32([[1, 0, -i * speed], [0, 1, 0]]), (w, h), flags=cv2.INTER_LINEAR
        )
        for i in range(n)
    ]


def dissolve(a: list[np.ndarray], b: list[np.ndarray]) -> list[np.ndarray]:
    """Cross-fade frame by frame from ``a`` to ``b`` (same length; weights 1/(n+1) .. n/(n+1))."""
    n = len(a)
    return [
        ((1 - (i + 1) / (n + 1)) * x.astype(np.float32) + (i + 1) / (n + 1) * y.astype(np.float32))
        .round()
        .astype(np.uint8)
        for i, (x, y) in enumerate(zip(a, b))
    ]
