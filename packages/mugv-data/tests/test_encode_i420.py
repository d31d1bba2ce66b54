"""Kept clips are encoded from I420 planes converted by OpenCV (mp4_writer.i420), not by
PyAV's swscale: the planes against BT.601 limited range in float64, and the decoded clips
against the RGB path of the same writer."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from mugv_data.mp4_writer import i420
from mugv_data.synth import scene
from mugv_formats.video import encode_mp4


def bt601_i420_64(rgb_HW3: np.ndarray) -> np.ndarray:
    """ITU-R BT.601, 8-bit limited range (Y 16-235, Cb/Cr 16-240), chroma = 2x2 mean."""
    r, g, b = (rgb_HW3[..., i].astype(np.float64) for i in range(3))
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    cb = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    cr = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    h, w = y.shape

    def sub(c):
        return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)).reshape(h // 4, w)

    return np.concatenate([y, sub(cb), sub(cr)])


def decode(mp4: bytes) -> np.ndarray:
    with av.open(io.BytesIO(mp4)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_i420_planes_match_bt601_limited_range():
    frames = scene(3, 96, 128, speed=2.0, seed=4)
    frames.append(np.zeros((96, 128, 3), np.uint8))
    frames.append(np.full((96, 128, 3), 255, np.uint8))
    for f, p in zip(frames, i420(frames), strict=True):
        assert p.shape == (144, 128) and p.dtype == np.uint8
        ref = bt601_i420_64(f)
        d = np.abs(p.astype(np.float64) - ref)
        assert d[:96].max() <= 1.0 and d[96:].max() <= 2.0, (d[:96].max(), d[96:].max())
    assert i420(frames[-2:]).__next__()[0, 0] == 16  # black -> Y 16 (limited range)


def test_i420_chroma_is_the_conversion_of_the_2x2_blocks():
    """The chroma planes equal OpenCV's I420 conversion of the frame with every 2x2 block set to
    its area mean (the direct construction), bit for bit, for frames of changing sizes."""
    import cv2

    frames = [*scene(2, 96, 128, speed=2.0, seed=6), *scene(2, 36, 50, seed=8)]
    for f, p in zip(frames, i420(frames), strict=True):
        h, w = f.shape[:2]
        half = cv2.resize(f, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        blocks = cv2.resize(half, (w, h), interpolation=cv2.INTER_NEAREST)
        ref = cv2.cvtColor(f, cv2.COLOR_RGB2YUV_I420)
        ref[h:] = cv2.cvtColor(blocks, cv2.COLOR_RGB2YUV_I420)[h:]
        assert np.array_equal(p, ref)


def test_encode_from_i420_equals_the_rgb_path():
    frames = scene(12, 96, 160, speed=2.0, seed=5)
    kw = dict(crf=18, preset="veryfast", threads=1)
    via_rgb = decode(encode_mp4(iter(frames), 25.0, **kw))
    via_i420 = decode(encode_mp4(i420(frames), 25.0, frame_format="yuv420p", **kw))
    assert via_i420.shape == via_rgb.shape == (12, 96, 160, 3)
    src = np.stack(frames).astype(int)
    err_rgb, err_i420 = np.abs(via_rgb - src).mean(), np.abs(via_i420 - src).mean()
    assert err_i420 <= err_rgb * 1.1 + 0.1, (err_i420, err_rgb)  # no worse than swscale's
    assert np.abs(via_i420.astype(int) - via_rgb).mean() < 1.5


def test_encode_mp4_rejects_bad_i420_shapes():
    with pytest.raises(ValueError, match=r"yuv420p frames must be uint8 \[H \* 3 // 2, W\]"):
        encode_mp4(iter([np.zeros((96, 128, 3), np.uint8)]), 25.0, frame_format="yuv420p")
    with pytest.raises(ValueError, match="frame_format 'nv12' is not rgb24 or yuv420p"):
        encode_mp4(iter([np.zeros((96, 128, 3), np.uint8)]), 25.0, frame_format="nv12")
