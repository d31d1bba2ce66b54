"""Video decoding and resolution buckets on the real sample clips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mugv_vae.video import (
    choose_bucket,
    decode_video,
    parse_resolution,
    to_model_input,
    usable_frames,
)


def test_decode_real_clip_and_bad_bytes(clip_dir):
    frames = decode_video((clip_dir / "carphone_pristine.mp4").read_bytes(), max_frames=5)
    assert frames.shape == (5, 144, 176, 3) and frames.dtype == np.uint8
    with pytest.raises(ValueError, match="broken.mp4: cannot decode"):
        decode_video(b"not a video at all", where="broken.mp4")


def test_decode_from_a_path_equals_decoding_its_bytes(clip_dir, tmp_path):
    path = clip_dir / "carphone_pristine.mp4"
    # an independent decode: PyAV directly, every frame as RGB
    import av

    with av.open(str(path)) as c:
        want = np.stack([f.to_ndarray(format="rgb24") for _, f in zip(range(4), c.decode(video=0))])
    for source in (path, str(path)):
        np.testing.assert_array_equal(decode_video(source, max_frames=4), want)
    np.testing.assert_array_equal(decode_video(path.read_bytes(), max_frames=4), want)
    (tmp_path / "bad.mp4").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"^video x: cannot decode video"):
        decode_video(tmp_path / "bad.mp4", where="video x")


def test_resolution_buckets_and_frame_rule():
    assert parse_resolution("256x448") == (256, 448)
    for bad in ("256", "255x256", "0x8", "axb"):
        with pytest.raises(ValueError):
            parse_resolution(bad)
    buckets = [(256, 256), (256, 448), (448, 256)]
    assert choose_bucket(720, 1280, buckets) == (256, 448)
    assert choose_bucket(1280, 720, buckets) == (448, 256)
    assert choose_bucket(144, 176, buckets) == (256, 256)
    assert (
        usable_frames(120, 33) == 33 and usable_frames(20, 33) == 17 and usable_frames(3, 33) == 1
    )


def test_to_model_input_covers_crops_and_scales():
    frames = np.zeros((2, 40, 80, 3), dtype=np.uint8)
    frames[:, :, 30:50] = 255  # a white vertical band in the centre
    x = to_model_input(frames, (16, 16))
    assert x.shape == (3, 2, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    # Cover-resize 40x80 -> 16x32, centre crop 16 columns: the band (columns 12..20) survives.
    assert x[0, 0, 8, 8] > 0.9 and x[0, 0, 8, 0] < -0.9
    with pytest.raises(ValueError, match="uint8"):
        to_model_input(frames.astype(np.float32), (16, 16))
