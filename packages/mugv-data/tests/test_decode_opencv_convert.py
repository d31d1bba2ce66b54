"""decode.convert=opencv (issue 24, CPU chain): PyAV frames scaled in YUV and converted to RGB
by OpenCV, and kept clips encoded from the decoder's own I420 planes.

References: PyAV's planes (``to_ndarray(format="yuv420p")``, scaled by ``reformat`` with the
interpolation of its RGB path), BT.601 limited range written out in float64, the swscale RGB
path, and the default chain's verdicts on the sample clips."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from mugv_data.decode import PyAVReader, i420_planes, rgb_of
from mugv_data.probe import probe_video
from mugv_data.synth import scene, write_video


def bt601_rgb_64(i420_HW: np.ndarray) -> np.ndarray:
    """I420 planes (BT.601 limited range) -> RGB in float64, chroma repeated 2x2, clipped."""
    h = i420_HW.shape[0] // 3 * 2
    w = i420_HW.shape[1]
    y = i420_HW[:h].astype(np.float64)
    uv = i420_HW[h:].reshape(-1)
    u = uv[: (h // 2) * (w // 2)].reshape(h // 2, w // 2).astype(np.float64)
    v = uv[(h // 2) * (w // 2) :].reshape(h // 2, w // 2).astype(np.float64)
    u = np.repeat(np.repeat(u, 2, 0), 2, 1) - 128
    v = np.repeat(np.repeat(v, 2, 0), 2, 1) - 128
    yy = (y - 16) * 255 / 219
    k = 255 / 224
    r = yy + k * 1.402 * v
    g = yy - k * (1.772 * 0.114 / 0.587) * u - k * (1.402 * 0.299 / 0.587) * v
    b = yy + k * 1.772 * u
    return np.clip(np.stack([r, g, b], -1), 0, 255)


def test_i420_planes_are_pyavs_planes_scaled_as_its_rgb_path(samples):
    for name in ("bigbuckbunny.mp4", "carphone_pristine.mp4"):
        with av.open(str(samples / name)) as c:
            for i, frame in enumerate(c.decode(video=0)):
                if i == 3:
                    break
                same = i420_planes(frame, frame.width, frame.height)
                assert np.array_equal(same, frame.to_ndarray(format="yuv420p"))
                w, h = frame.width // 2 // 2 * 2, frame.height // 2 // 2 * 2
                ref = frame.reformat(width=w, height=h, interpolation="BILINEAR")
                assert np.array_equal(i420_planes(frame, w, h), ref.to_ndarray(format="yuv420p"))
    rgb = av.VideoFrame.from_ndarray(np.zeros((32, 48, 3), np.uint8), format="rgb24")
    assert i420_planes(rgb, 48, 32) is None  # another pixel format: the caller uses swscale
    full = av.VideoFrame.from_ndarray(np.zeros((48, 48), np.uint8), format="yuvj420p")
    assert i420_planes(full, 48, 32) is None  # full range: not BT.601 limited


def test_opencv_reader_is_bt601_and_keeps_the_planes(tmp_path):
    path = write_video(tmp_path / "s.mp4", scene(6, 96, 160, speed=2.0, seed=7))
    info = probe_video(path)
    cv_reader = PyAVReader(info, None, convert="opencv")
    sw_reader = PyAVReader(info, None)
    with av.open(str(path)) as c:
        planes = [f.to_ndarray(format="yuv420p") for f in c.decode(video=0)]
    sw = sw_reader.get_batch(range(6)).astype(np.float64)
    for t, rgb in enumerate(cv_reader.iter_frames()):
        assert np.array_equal(cv_reader.last_i420, planes[t])
        ref = bt601_rgb_64(planes[t])
        assert np.abs(rgb - ref).max() <= 1.0  # OpenCV's fixed point rounds within 1 level
        assert np.abs(rgb - sw[t]).mean() < 2.0  # swscale's default conversion: ~0.8 darker
    got = list(PyAVReader(info, None, convert="opencv").iter_planes())
    assert all(np.array_equal(g, p) for g, p in zip(got, planes, strict=True))  # the planes
    rgb_again = np.stack([rgb_of(g) for g in got])
    assert np.array_equal(rgb_again, np.stack(list(cv_reader.iter_frames())))
    assert PyAVReader(info, None).iter_planes().__next__().shape == (96, 160, 3)  # swscale: RGB
    with pytest.raises(ValueError, match="decode.convert='nv12'"):
        PyAVReader(info, None, convert="nv12")


def test_rotated_streams_keep_no_planes(tmp_path):
    path = write_video(tmp_path / "r.mp4", scene(3, 64, 96, seed=2), rotation=90)
    info = probe_video(path)
    reader = PyAVReader(info, None, convert="opencv")
    frames = list(reader.iter_frames())
    assert frames[0].shape == (96, 64, 3) and reader.last_i420 is None
    assert all(f.shape == (96, 64, 3) for f in reader.iter_planes())  # rotated: RGB
    ref = PyAVReader(info, None).get_batch(range(3)).astype(np.float64)
    assert np.abs(np.stack(frames) - ref).mean() < 2.0


def _decode(mp4: bytes) -> np.ndarray:
    import io

    with av.open(io.BytesIO(mp4)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(float)


def test_opencv_convert_keeps_the_verdicts_of_the_sample_clips(samples, monkeypatch):
    """The chain with decode.backend=pyav decode.convert=opencv on real clips: the default's
    verdicts, scores close to it (sharpness within 2 %: the same scaler), and kept clips
    encoded from the decoder's planes held in the frame cache (mp4_writer.i420 never called,
    with a cache too small for RGB frames), as close to the source (PyAV's RGB frames) as the
    default's clips encoded from RGB."""
    import mugv_data.per_source as per_source
    from mugv_data.config import load_config
    from mugv_data.per_source import SourceProcessor

    demo = Path(__file__).parents[1] / "configs" / "demo.yaml"
    base = ["filters.text.enabled=false", "clip.preset=ultrafast"]
    ref = SourceProcessor(load_config(demo, overrides=base))
    # cache_mb 100: bikes' 250 RGB frames at 640x272 (131 MB) would not fit, its I420 planes
    # (65 MB) do: the clips below are encoded from the cached planes
    fast = SourceProcessor(
        load_config(
            demo,
            overrides=[
                *base,
                "decode.backend=pyav",
                "decode.convert=opencv",
                "decode.cache_mb=100",
            ],
        )
    )
    a = {n: ref(samples / n) for n in ("bikes.mp4", "carphone_pristine.mp4")}
    calls = []
    monkeypatch.setattr(per_source, "i420", lambda frames: calls.append(1) or frames)
    for name, ra in a.items():
        rb = fast(samples / name)
        assert rb.decoder == "pyav"
        assert [c.rejected_stage for c in ra.clips] == [c.rejected_stage for c in rb.clips]
        kept = 0
        for ca, cb in zip(ra.clips, rb.clips, strict=True):
            if ca.rejected_stage == "split":
                continue
            assert cb.scores["sharpness"] == pytest.approx(ca.scores["sharpness"], rel=0.02)
            assert cb.scores["brightness"] == pytest.approx(ca.scores["brightness"], abs=2.0)
            assert cb.scores["motion"] == pytest.approx(ca.scores["motion"], rel=0.05)
            if ca.kept:
                kept += 1
                va, vb = _decode(ca.mp4), _decode(cb.mp4)
                src = PyAVReader(probe_video(samples / name), 360).get_batch(
                    range(ca.start_frame, ca.end_frame)
                )
                assert va.shape == vb.shape == src.shape
                err_a, err_b = np.abs(va - src).mean(), np.abs(vb - src).mean()
                assert err_b <= err_a + 0.25, (name, err_a, err_b)  # no worse than RGB -> I420
        assert kept > 0
    assert calls == []  # every kept clip went to the encoder as the decoder's planes
