"""Frame readers: decord (fast random access) and torchcodec (CPU, or NVDEC on CUDA) with PyAV
as the reference and the fallback.

Shape legend: N frames, H height, W width, 3 RGB channels; frames are uint8 ``[N, H, W, 3]``
in display orientation (the stream's rotation is applied).

decord misplaces frames on some streams (e.g. MPEG-2 whose timestamps do not start at 0), so
:func:`open_reader` decodes a few frames with both decoders and falls back to PyAV when they
disagree. The reason is kept on the reader (``fallback_reason``) and recorded per source.
``decode.backend=torchcodec`` is checked against PyAV the same way (frame count always, frames on
risky streams or with ``check_agreement=always``); ``decode.device=cuda`` decodes with NVDEC.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Literal

import av
import cv2
import numpy as np

from mugv_data.config import DecodeConfig
from mugv_data.probe import VideoInfo

try:  # optional extra
    import decord

    decord.bridge.set_bridge("native")
    HAVE_DECORD = True
except Exception:  # pragma: no cover - depends on the platform
    decord = None
    HAVE_DECORD = False


def target_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(w, h) scaled so the short side is at most ``short_side``, even, never upscaled."""
    if short_side is None or min(width, height) <= short_side:
        w, h = width, height
    else:
        s = short_side / min(width, height)
        w, h = round(width * s), round(height * s)
    return max(2, w - w % 2), max(2, h - h % 2)


def _rotate_NHW3(frames_NHW3: np.ndarray, rotation: int) -> np.ndarray:
    if rotation == 0:
        return frames_NHW3
    return np.ascontiguousarray(np.rot90(frames_NHW3, k=rotation // 90, axes=(1, 2)))


class FrameReader(ABC):
    """Decodes frames of one video at a fixed output size (display orientation)."""

    backend: str = ""

    def __init__(self, info: VideoInfo, short_side: int | None, threads: int = 1) -> None:
        self.info = info
        self.width, self.height = target_size(info.width, info.height, short_side)
        rotated = info.rotation in (90, 270)
        # size asked from the decoder, in coded orientation
        self._dec_w, self._dec_h = (
            (self.height, self.width) if rotated else (self.width, self.height)
        )
        self.threads = threads
        self.fallback_reason: str | None = None

    @property
    def num_frames(self) -> int:
        return self.info.num_frames

    @abstractmethod
    def get_batch(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at ``indices`` (any order, repeats allowed) as uint8 [N, H, W, 3]."""

    def iter_frames(
        self, start: int = 0, stop: int | None = None, chunk: int = 32
    ) -> Iterator[np.ndarray]:
        """Yield frames ``start..stop-1`` in order as uint8 [H, W, 3]."""
        stop = self.num_frames if stop is None else min(stop, self.num_frames)
        for a in range(start, stop, chunk):
            batch = self.get_batch(list(range(a, min(a + chunk, stop))))
            yield from batch

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release decoder resources."""


class DecordReader(FrameReader):
    backend = "decord"

    def __init__(self, info: VideoInfo, short_side: int | None, threads: int = 1) -> None:
        super().__init__(info, short_side, threads)
        if not HAVE_DECORD:
            raise RuntimeError("decord is not installed (install mugv-data[decord])")
        self._vr = decord.VideoReader(
            info.path, ctx=decord.cpu(0), width=self._dec_w, height=self._dec_h, num_threads=threads
        )

    def get_batch(self, indices: Sequence[int]) -> np.ndarray:
        idx = [int(i) for i in indices]
        if not idx:
            return np.zeros((0, self.height, self.width, 3), np.uint8)
        bad = [i for i in idx if not 0 <= i < len(self._vr)]
        if bad:
            raise IndexError(f"{self.info.path}: frame index {bad[0]} outside [0, {len(self._vr)})")
        frames = self._vr.get_batch(idx).asnumpy()
        return _rotate_NHW3(frames, self.info.rotation)

    def close(self) -> None:
        self._vr = None


def i420_planes(frame, width: int, height: int) -> np.ndarray | None:
    """A decoded ``yuv420p`` PyAV frame as I420 planes ``uint8 [height * 3 // 2, width]``
    (Y, then U, then V) at ``width x height`` (even), or None when the frame is another pixel
    format (full-range ``yuvj420p`` included) or has an odd coded size.

    A frame of another size is scaled by swscale in YUV with the interpolation PyAV's
    ``to_ndarray`` uses for RGB (bilinear), so the analysis frames are as sharp as the swscale
    and decord paths' (the sharpness filter's scale); only the colour conversion moves to
    OpenCV."""
    if frame.format.name != "yuv420p" or frame.width % 2 or frame.height % 2:
        return None
    if (frame.width, frame.height) != (width, height):
        frame = frame.reformat(width=width, height=height, interpolation="BILINEAR")
    out = np.empty((height * 3 // 2, width), np.uint8)
    flat = out.reshape(-1)
    pos = 0
    for plane, (pw, ph) in zip(
        frame.planes, ((width, height), (width // 2, height // 2), (width // 2, height // 2))
    ):
        rows = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:ph, :pw]
        flat[pos : pos + pw * ph].reshape(ph, pw)[:] = rows
        pos += pw * ph
    return out


def rgb_of(frame: np.ndarray) -> np.ndarray:
    """RGB ``[H, W, 3]`` of what :meth:`PyAVReader.iter_planes` yielded (I420 planes are
    converted by OpenCV, BT.601 limited range, as ``convert=opencv`` does)."""
    return frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_YUV2RGB_I420)


class PyAVReader(FrameReader):
    """Reference reader: seeks to the keyframe before the first wanted frame, then decodes in
    order, identifying frames by their pts in the probe's timestamp table.

    ``convert``: ``swscale`` (PyAV's ``to_ndarray``, the reference) or ``opencv``: ``yuv420p``
    frames are scaled in YUV (:func:`i420_planes`) and converted to RGB by OpenCV (BT.601
    limited range; closer to the standard than swscale's default conversion, which is about
    0.8 levels darker), at about 60 % of the CPU time of swscale's RGB path (other pixel
    formats take swscale). With ``opencv``, :attr:`last_i420` holds the I420
    planes of the frame ``iter_frames`` last yielded (None where there were none, or the
    stream is rotated), and :meth:`iter_planes` yields those planes instead of RGB, so a
    frame cache can hold half the bytes and an encoder can take them without converting RGB
    back.
    """

    backend = "pyav"

    def __init__(
        self,
        info: VideoInfo,
        short_side: int | None,
        threads: int = 1,
        convert: Literal["swscale", "opencv"] = "swscale",
    ) -> None:
        super().__init__(info, short_side, threads)
        if convert not in ("swscale", "opencv"):
            raise ValueError(f"decode.convert={convert!r}: expected swscale or opencv")
        self.convert = convert
        self._pts_index = {int(p): i for i, p in enumerate(info.pts)}
        self._container = None
        self.last_i420: np.ndarray | None = None
        self._planes_out = False

    def _open(self):
        if self._container is None:
            self._container = av.open(self.info.path)
            s = self._container.streams.video[0]
            s.thread_type = "AUTO" if self.threads != 1 else "SLICE"
            if self.threads > 0:
                s.codec_context.thread_count = self.threads
        return self._container

    def _to_array(self, frame) -> np.ndarray:
        self.last_i420 = None
        if self.convert == "opencv":
            planes = i420_planes(frame, self._dec_w, self._dec_h)
            if planes is not None:
                if self.info.rotation == 0:
                    self.last_i420 = planes
                    if self._planes_out:
                        return planes
                return cv2.cvtColor(planes, cv2.COLOR_YUV2RGB_I420)
        return frame.to_ndarray(width=self._dec_w, height=self._dec_h, format="rgb24")

    def _decode_range(self, first: int, last: int, wanted: set[int]) -> dict[int, np.ndarray]:
        out = self._decode_range_from(first, last, wanted, seek=True)
        if len(out) < len(wanted):  # unreliable seek (e.g. MPEG-TS): decode from the start
            self.close()
            out = self._decode_range_from(first, last, wanted, seek=False)
        return out

    def _decode_range_from(
        self, first: int, last: int, wanted: set[int], *, seek: bool
    ) -> dict[int, np.ndarray]:
        c = self._open()
        stream = c.streams.video[0]
        if seek:
            c.seek(int(self.info.pts[first]), stream=stream, backward=True, any_frame=False)
        out: dict[int, np.ndarray] = {}
        counter = None if seek else -1
        for frame in c.decode(stream):
            if frame.pts is not None and int(frame.pts) in self._pts_index:
                i = self._pts_index[int(frame.pts)]
                counter = i
            elif counter is not None:
                counter += 1
                i = counter
            else:
                continue
            if i in wanted:
                out[i] = self._to_array(frame)
            if i >= last:
                break
        return out

    def get_batch(self, indices: Sequence[int]) -> np.ndarray:
        idx = [int(i) for i in indices]
        if not idx:
            return np.zeros((0, self.height, self.width, 3), np.uint8)
        bad = [i for i in idx if not 0 <= i < self.num_frames]
        if bad:
            raise IndexError(
                f"{self.info.path}: frame index {bad[0]} outside [0, {self.num_frames})"
            )
        wanted = sorted(set(idx))
        got: dict[int, np.ndarray] = {}
        # decode contiguous-ish groups; a gap of > 64 frames triggers a new seek
        group = [wanted[0]]
        for i in [*wanted[1:], None]:
            if i is not None and i - group[-1] <= 64:
                group.append(i)
                continue
            got.update(self._decode_range(group[0], group[-1], set(group)))
            if i is not None:
                group = [i]
        missing = [i for i in wanted if i not in got]
        if missing:
            raise RuntimeError(f"{self.info.path}: PyAV could not decode frame(s) {missing[:5]}")
        frames = np.stack([got[i] for i in idx])
        return _rotate_NHW3(frames, self.info.rotation)

    def iter_frames(
        self, start: int = 0, stop: int | None = None, chunk: int = 32
    ) -> Iterator[np.ndarray]:
        stop = self.num_frames if stop is None else min(stop, self.num_frames)
        if start >= stop:
            return
        seek = start > 0
        self.close()
        c = self._open()
        stream = c.streams.video[0]
        if seek:
            c.seek(int(self.info.pts[start]), stream=stream, backward=True, any_frame=False)
        expected = start
        counter = None if seek else -1
        for frame in c.decode(stream):
            if frame.pts is not None and int(frame.pts) in self._pts_index:
                counter = self._pts_index[int(frame.pts)]
            elif counter is not None:
                counter += 1
            else:
                continue
            if counter < expected:
                continue
            if counter != expected and seek and expected == start:
                # the seek landed past the start (unreliable index): decode from the beginning
                yield from self._iter_from_start(start, stop)
                return
            if counter != expected:
                raise RuntimeError(
                    f"{self.info.path}: PyAV skipped from frame {expected} to {counter}"
                )
            yield _rotate_NHW3(self._to_array(frame)[None], self.info.rotation)[0]
            expected += 1
            if expected >= stop:
                return
        if expected < stop:
            raise RuntimeError(f"{self.info.path}: stream ended at frame {expected} of {stop}")

    def iter_planes(self, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        """``iter_frames``, except that with ``convert=opencv`` a ``yuv420p`` frame of an
        unrotated stream comes as its I420 planes ``uint8 [H * 3 // 2, W]`` (2-D; turn it into
        RGB with :func:`rgb_of`); other frames come as RGB ``[H, W, 3]``."""
        if self.convert != "opencv":
            yield from self.iter_frames(start, stop)
            return
        self._planes_out = True
        try:
            yield from self.iter_frames(start, stop)
        finally:
            self._planes_out = False

    def _iter_from_start(self, start: int, stop: int) -> Iterator[np.ndarray]:
        self.close()
        c = self._open()
        for i, frame in enumerate(c.decode(c.streams.video[0])):
            if i >= stop:
                return
            if i >= start:
                yield _rotate_NHW3(self._to_array(frame)[None], self.info.rotation)[0]

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


class DecoderUnavailable(RuntimeError):
    """The configured decoder cannot run here (not installed, no FFmpeg, no GPU)."""


def torchcodec_ffmpeg_error() -> str | None:
    """Why torchcodec cannot load FFmpeg in this process, or None. torchcodec 0.17 imports
    without FFmpeg and loads it at the first decoder (older versions at import), so its loader
    is asked; the failure is not cached by torchcodec, the answer is not cached here."""
    try:
        from torchcodec._core.ops import load_core_libraries
    except ImportError:  # older torchcodec: importing its decoders loaded FFmpeg
        return None
    try:
        load_core_libraries()
    except Exception as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        missing = [ln for ln in lines if "cannot open shared object file" in ln]
        return "; ".join(lines[:1] + missing[:1]) if lines else type(e).__name__
    return None


class TorchCodecReader(FrameReader):
    """torchcodec's ``VideoDecoder`` (exact seek mode: frame i is the i-th presented frame, as
    in the probe's timestamp table) on ``device``: ``cpu`` (FFmpeg) or ``cuda[:N]`` (NVDEC).
    Frames are resized to the output size on that device (bilinear with antialiasing, as
    ``torch.nn.functional.interpolate``) and returned as host uint8 arrays."""

    backend = "torchcodec"

    def __init__(
        self, info: VideoInfo, short_side: int | None, threads: int = 1, device: str = "cpu"
    ) -> None:
        super().__init__(info, short_side, threads)
        try:
            from torchcodec.decoders import VideoDecoder
        except Exception as e:  # ImportError, or (torchcodec < 0.17) FFmpeg not found
            raise DecoderUnavailable(
                f"decode.backend=torchcodec: torchcodec cannot load (install mugv-data[nvdec] "
                f"and FFmpeg's shared libraries): {str(e).splitlines()[0]}"
            ) from e
        import torch

        self.torch = torch
        self.device = device
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise DecoderUnavailable(f"decode.device={device} but torch sees no CUDA device")
        why = torchcodec_ffmpeg_error()
        if why is not None:  # not a bad stream: every source would fail the same way
            raise DecoderUnavailable(
                "decode.backend=torchcodec: torchcodec cannot load FFmpeg's shared libraries "
                f"(install FFmpeg 4-8, or use decode.backend=auto): {why}"
            )
        self._dec = VideoDecoder(
            info.path, device=device, num_ffmpeg_threads=threads, seek_mode="exact"
        )
        # recent torchcodec applies the display rotation itself (metadata.rotation); older
        # versions return coded orientation (told apart by the frame shape for 90/270)
        self._rotation: int | None = None

    @property
    def decoded_frames(self) -> int:
        """Frames torchcodec counts in the stream (compared with the demuxer's count)."""
        return len(self._dec)

    def get_batch(self, indices: Sequence[int]) -> np.ndarray:
        idx = [int(i) for i in indices]
        if not idx:
            return np.zeros((0, self.height, self.width, 3), np.uint8)
        bad = [i for i in idx if not 0 <= i < len(self._dec)]
        if bad:
            raise IndexError(
                f"{self.info.path}: frame index {bad[0]} outside [0, {len(self._dec)})"
            )
        torch = self.torch
        x_N3HW = self._dec.get_frames_at(idx).data
        if self._rotation is None:
            upright = tuple(x_N3HW.shape[-2:]) == (self.info.height, self.info.width)
            if self.info.rotation == 180:
                upright = hasattr(self._dec.metadata, "rotation")
            self._rotation = 0 if upright else self.info.rotation
        size = (self.height, self.width) if self._rotation == 0 else (self._dec_h, self._dec_w)
        if tuple(x_N3HW.shape[-2:]) != size:
            x_N3HW = (
                torch.nn.functional.interpolate(
                    x_N3HW.float(),
                    size=size,
                    mode="bilinear",
                    antialias=True,
                    align_corners=False,
                )
                .round_()
                .clamp_(0, 255)
                .to(torch.uint8)
            )
        frames = x_N3HW.permute(0, 2, 3, 1).cpu().numpy()
        return _rotate_NHW3(np.ascontiguousarray(frames), self._rotation)

    def close(self) -> None:
        self._dec = None


def check_agreement(a: FrameReader, b: FrameReader, tolerance: float) -> str | None:
    """None when ``a`` and ``b`` decode the same frames at a few indices; else the reason."""
    n = a.info.num_frames
    idx = sorted({0, n // 3, (2 * n) // 3, max(0, n - 2)})
    try:
        fa = a.get_batch(idx).astype(np.float32)
    except Exception as e:
        return f"{a.backend} failed on indices {idx}: {e}"
    fb = b.get_batch(idx).astype(np.float32)
    diffs = np.abs(fa - fb).mean(axis=(1, 2, 3))
    worst = int(np.argmax(diffs))
    if diffs[worst] > tolerance:
        return (
            f"{a.backend} and {b.backend} disagree at frame {idx[worst]}: mean |diff| "
            f"{diffs[worst]:.2f} > decode.agreement_tolerance={tolerance}"
        )
    return None


RISKY_CODECS = {"mpeg1video", "mpeg2video"}
RISKY_CONTAINERS = {"mpegts", "mpeg", "mpegvideo"}


def is_risky(info: VideoInfo) -> bool:
    """Streams on which decord is known to misplace frames (checked against PyAV)."""
    containers = set(info.container.split(","))
    return (
        info.codec in RISKY_CODECS
        or bool(containers & RISKY_CONTAINERS)
        or abs(info.start_time_s) > 1e-9
        or info.vfr
    )


def _pyav(info: VideoInfo, config: DecodeConfig, short_side: int | None) -> PyAVReader:
    return PyAVReader(info, short_side, config.threads, config.convert)


def open_reader(info: VideoInfo, config: DecodeConfig, short_side: int | None) -> FrameReader:
    """Reader for ``info`` at ``short_side``: decord when allowed and trustworthy, else PyAV."""
    if config.backend == "torchcodec":
        return _open_torchcodec(info, config, short_side)
    if config.backend == "pyav" or (config.backend == "auto" and not HAVE_DECORD):
        return _pyav(info, config, short_side)
    if info.rotation != 0 and config.backend == "auto":
        ref = _pyav(info, config, short_side)
        ref.fallback_reason = f"rotation {info.rotation}: decord mishandles display-matrix rotation"
        return ref
    try:
        reader: FrameReader = DecordReader(info, short_side, config.threads)
    except Exception as e:
        if config.backend == "decord":
            raise
        ref = _pyav(info, config, short_side)
        ref.fallback_reason = f"decord cannot open: {e}"
        return ref
    reason = _disagreement("decord", len(reader._vr), reader, info, config, short_side)
    if reason is None:
        return reader
    if config.backend == "decord":
        warnings.warn(f"{info.path}: {reason} (decode.backend=decord kept)", stacklevel=2)
        return reader
    return _fall_back(reader, reason, info, config, short_side)


def _disagreement(
    name: str,
    frame_count: int,
    reader: FrameReader,
    info: VideoInfo,
    config: DecodeConfig,
    short_side: int | None,
) -> str | None:
    """Why ``reader`` (decord or torchcodec) cannot be trusted on this stream, or None: its frame
    count differs from the demuxer's, or (``check_agreement``) its sampled frames from PyAV's."""
    if frame_count != info.num_frames:
        return f"{name} counts {frame_count} frames, demuxer {info.num_frames}"
    if config.check_agreement == "always" or (config.check_agreement == "risky" and is_risky(info)):
        ref = _pyav(info, config, short_side)
        try:
            return check_agreement(reader, ref, config.agreement_tolerance)
        finally:
            ref.close()
    return None


def _fall_back(
    reader: FrameReader, reason: str, info: VideoInfo, config: DecodeConfig, short_side: int | None
) -> FrameReader:
    """Close ``reader`` and decode with PyAV instead, keeping the reason."""
    reader.close()
    ref = _pyav(info, config, short_side)
    ref.fallback_reason = reason
    return ref


def _open_torchcodec(info: VideoInfo, config: DecodeConfig, short_side: int | None) -> FrameReader:
    """torchcodec (``decode.device``), checked against PyAV like decord: a stream whose frame
    count or sampled frames disagree is decoded by PyAV instead (reason kept)."""
    try:
        reader = TorchCodecReader(info, short_side, config.threads, config.device)
    except DecoderUnavailable:
        raise
    except Exception as e:  # FFmpeg could not open the stream: PyAV names the problem
        ref = _pyav(info, config, short_side)
        ref.fallback_reason = f"torchcodec cannot open: {str(e).splitlines()[0]}"
        return ref
    reason = _disagreement("torchcodec", reader.decoded_frames, reader, info, config, short_side)
    if reason is None:
        return reader
    return _fall_back(reader, reason, info, config, short_side)
