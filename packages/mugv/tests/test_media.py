"""The umbrella's frames and videos: [-1, 1] float to uint8, and an mp4 that decodes back."""

from __future__ import annotations

import av
import numpy as np
from mugv.media import to_uint8, write_mp4


def test_to_uint8_maps_the_range_and_moves_channels_last():
    x = np.array([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0], np.float32).reshape(1, 1, 1, 6)
    x_CTHW = np.concatenate([x, x, x])  # [3, 1, 1, 6]
    y = to_uint8(x_CTHW)
    assert y.shape == (1, 1, 6, 3) and y.dtype == np.uint8
    # (v + 1) * 127.5 rounded, v clipped to [-1, 1]
    assert y[0, 0, :, 0].tolist() == [0, 0, 128, 191, 255, 255]


def test_write_mp4_round_trips_frames_cropped_to_even_size(tmp_path):
    t, y, x = np.meshgrid(np.arange(9), np.arange(33), np.arange(47), indexing="ij")
    frames = np.stack([40 + 3 * x + t, 40 + 4 * y, 200 - 2 * x - 2 * y + 3 * t], -1)
    frames = frames.astype(np.uint8)  # smooth ramps, moving with t: [9, 33, 47, 3]
    path = write_mp4(frames, tmp_path / "v.mp4")
    assert path == tmp_path / "v.mp4" and [p.name for p in tmp_path.iterdir()] == ["v.mp4"]
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        assert float(stream.average_rate) == 8.0
        out = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert out.shape == (9, 32, 46, 3)
    err = np.abs(out.astype(np.float64) - frames[:, :32, :46].astype(np.float64)).mean()
    assert err < 3, err  # lossy (crf 18, 4:2:0 chroma) but the same pictures
