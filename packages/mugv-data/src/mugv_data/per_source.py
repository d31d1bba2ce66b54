"""Per-source work: probe -> decode -> shot split -> clip stages -> encode kept clips.

:class:`SourceProcessor` is built once per worker (stages set up once) and turns one video
path into a picklable :class:`SourceResult`; engines only move paths in and results out.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from mugv_formats.video import encode_mp4

from mugv_data.config import CurateConfig
from mugv_data.decode import (
    DecoderUnavailable,
    FrameReader,
    PyAVReader,
    open_reader,
    rgb_of,
    target_size,
)
from mugv_data.inputs import resolve_path, source_id
from mugv_data.model_pool import ModelPoolClient, ModelPoolUnavailable, is_model_stage
from mugv_data.mp4_writer import i420, resample_indices, resized
from mugv_data.probe import ProbeError, VideoInfo, probe_video
from mugv_data.stages.base import Clip, ClipFrames, ClipStage, Resources
from mugv_data.stages.camera import ShakeFilter, SpeedFilter
from mugv_data.stages.filters import (
    BorderFilter,
    BrightnessFilter,
    MotionFilter,
    SharpnessFilter,
    StaticFilter,
)
from mugv_data.stages.split import ShotSplitter
from mugv_data.stages.text import TextFilter

THUMB_SHORT_SIDE = 96
EMBED_SIDE = 16


@dataclass
class ClipOutcome:
    """One candidate clip after the per-source stages (kept or rejected)."""

    key: str
    index: int
    start_frame: int
    end_frame: int
    start_s: float
    end_s: float
    scores: dict[str, float]
    rejected_stage: str | None
    reason: str | None
    fps: float = 0.0
    num_frames: int = 0
    width: int = 0
    height: int = 0
    thumb_jpeg: bytes | None = None
    embedding: list[float] | None = None
    """Thumbnail embedding (always present for clips with frames)."""
    clip_embedding: list[float] | None = None
    """CLIP image embedding (when the aesthetic stage ran)."""
    mp4: bytes | None = field(default=None, repr=False)

    @property
    def kept(self) -> bool:
        return self.rejected_stage is None


@dataclass
class SourceResult:
    """Everything a worker learned about one source video."""

    source: str
    source_id: str
    probe: dict[str, Any] | None = None
    decoder: str | None = None
    fallback_reason: str | None = None
    reject_stage: str | None = None
    reject_kind: str | None = None
    reject_detail: str | None = None
    split: dict[str, Any] = field(default_factory=dict)
    clips: list[ClipOutcome] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def build_clip_stages(config: CurateConfig) -> list[ClipStage]:
    """Enabled clip stages, cheap ones first; the model stages (aesthetic, classifier,
    clip_embedding) last, so a model pool can take them over as a block."""
    f = config.filters
    threads = max(1, config.decode.threads)
    stages: list[ClipStage] = []
    for cfg, cls in (
        (f.brightness, BrightnessFilter),
        (f.borders, BorderFilter),
        (f.static, StaticFilter),
        (f.sharpness, SharpnessFilter),
        (f.motion, MotionFilter),
        (f.shake, ShakeFilter),
        (f.speed, SpeedFilter),
    ):
        if cfg.enabled:
            stages.append(cls(cfg))
    if f.text.enabled:
        stages.append(TextFilter(f.text, threads=threads))
    if f.aesthetic.enabled:
        from mugv_data.stages.aesthetic import AestheticFilter

        stages.append(AestheticFilter(f.aesthetic))
    if f.classifier.enabled:
        from mugv_data.stages.classifier import ClassifierFilter

        stages.append(ClassifierFilter(f.classifier))
    if f.clip_embedding.enabled:  # after aesthetic: its open_clip embedding is the one kept
        from mugv_data.stages.clip_embedding import ClipEmbeddingStage

        stages.append(ClipEmbeddingStage(f.clip_embedding))
    for s in stages:
        s.short_circuit = f.short_circuit
    return stages


#: Host memory of a per-source worker beside its frame cache (decoders, models, one source).
WORKER_BASE_MB = 512


def worker_resources(config: CurateConfig, *, model_stages: bool = True) -> Resources:
    """Resources one worker needs: the max over its stages (without the model stages when a
    model pool runs them), and memory for its frame cache (``decode.cache_mb``) on top of
    :data:`WORKER_BASE_MB`."""
    r = ShotSplitter(config.split).resources
    for s in build_clip_stages(config):
        if model_stages or not is_model_stage(s):
            r = r.merge(s.resources)
    return r.merge(Resources(cpus=0, memory_mb=WORKER_BASE_MB + config.decode.cache_mb))


def build_source_worker(config: CurateConfig, encode: bool = True) -> SourceProcessor:
    """A set-up :class:`SourceProcessor` (engines call it once per worker; ``encode=False``
    scores without writing clips)."""
    proc = SourceProcessor(config, encode=encode)
    proc.setup()
    return proc


def thumbnail_jpeg(frame_HW3: np.ndarray) -> bytes:
    h, w = frame_HW3.shape[:2]
    s = THUMB_SHORT_SIDE / min(h, w)
    small = cv2.resize(
        frame_HW3, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA
    )
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80]
    )
    assert ok
    return buf.tobytes()


def thumbnail_embedding(frames_NHW3: np.ndarray) -> np.ndarray:
    """Unit-norm float32 vector from tiny zero-mean gray versions of a few frames."""
    parts = []
    for f in frames_NHW3:
        g = cv2.resize(
            cv2.cvtColor(f, cv2.COLOR_RGB2GRAY),
            (EMBED_SIDE, EMBED_SIDE),
            interpolation=cv2.INTER_AREA,
        )
        g = g.astype(np.float32).ravel()
        parts.append(g - g.mean())
    v = np.concatenate(parts)
    return (v / (np.linalg.norm(v) + 1e-6)).astype(np.float32)


class SourceProcessor:
    """Runs every per-source stage for one video at a time."""

    def __init__(
        self,
        config: CurateConfig,
        *,
        encode: bool = True,
        model_pool: ModelPoolClient | None = None,
    ) -> None:
        """``encode=False`` scores clips without writing them (benchmarks, dry runs);
        ``model_pool``: the model stages run there, never loaded here."""
        self.config = config
        self.encode = encode
        self.model_pool = model_pool
        self.splitter = ShotSplitter(config.split)
        self.stages = build_clip_stages(config)
        self._per_source: dict[str, list[ClipStage]] = {}
        self._decode = config.decode  # switched to PyAV for a retry after a decord failure
        self._ready = False

    def setup(self) -> None:
        if not self._ready:
            cv2.setNumThreads(max(1, self.config.decode.threads))
            self.splitter.setup()
            for s in self.stages:
                if self.model_pool is None or not is_model_stage(s):
                    s.setup()
            self._ready = True

    def teardown(self) -> None:
        for s in self.stages:
            s.teardown()
        for stages in self._per_source.values():
            for s in stages:
                if not any(s is b for b in self.stages):
                    s.teardown()
        self._per_source.clear()
        self._ready = False

    def stages_for(self, source: str) -> list[ClipStage]:
        """The clip stages for one source: the run's, or with ``filters.per_source``
        overrides whose glob matches it. A stage the run already has is copied with the new
        settings and shares what its ``setup`` loaded (models, detectors)."""
        f = self.config.filters.for_source(source)
        if f is self.config.filters:
            return self.stages
        key = f.model_dump_json()
        if key not in self._per_source:
            base = {type(s): s for s in self.stages}
            stages = []
            for s in build_clip_stages(self.config.model_copy(update={"filters": f})):
                b = base.get(type(s))
                if b is not None:
                    shared = copy.copy(b)
                    shared.config, shared.short_circuit = s.config, s.short_circuit
                    s = shared
                stages.append(s)
            self._per_source[key] = stages
        return self._per_source[key]

    def __call__(self, path: str | Path) -> SourceResult:
        self.setup()
        path = Path(path)
        res = SourceResult(source=str(resolve_path(path)), source_id=source_id(path))
        t0 = time.perf_counter()
        try:
            info = probe_video(path, self.config.decode)
        except ProbeError as e:
            res.reject_stage, res.reject_kind, res.reject_detail = "probe", e.kind, e.detail
            return res
        res.probe = info.summary()
        res.timings["probe"] = time.perf_counter() - t0
        self._decode = self.config.decode
        try:
            self._process(info, res)
        except (DecoderUnavailable, ModelPoolUnavailable):  # not a bad stream: stop the run
            raise
        except Exception as e:  # a bad stream must not stop the run
            detail = f"{type(e).__name__}: {e}"
            res.clips = []
            if (res.decoder, self.config.decode.backend) in (
                ("decord", "auto"),
                ("torchcodec", "torchcodec"),
            ):
                # decord fails on some streams it opened (e.g. odd scaled sizes): PyAV again
                failed = res.decoder
                self._decode = self.config.decode.model_copy(update={"backend": "pyav"})
                try:
                    self._process(info, res)
                    res.fallback_reason = f"{failed} failed mid-stream ({detail})"
                    return res
                except Exception as e2:
                    detail = f"{type(e2).__name__}: {e2}"
                    res.clips = []
                finally:
                    self._decode = self.config.decode
            res.reject_stage, res.reject_kind = "decode", "decode-error"
            res.reject_detail = detail
        return res

    def _process(self, info: VideoInfo, res: SourceResult) -> None:
        cfg = self.config
        tm = res.timings
        t = time.perf_counter()
        reader = open_reader(info, self._decode, cfg.decode.analysis_short_side)
        res.decoder, res.fallback_reason = reader.backend, reader.fallback_reason
        # decode.convert=opencv: the cache holds the decoder's I420 planes (half the bytes of
        # RGB; frames are converted when a stage asks for them) and kept clips at the analysis
        # size are encoded from them. A stream whose frames come as RGB instead (another pixel
        # format, rotation) may outgrow the estimate: the cache is then dropped mid-way.
        planes = isinstance(reader, PyAVReader) and reader.convert == "opencv"
        budget = cfg.decode.cache_mb * (1 << 20)
        frame_bytes = reader.width * reader.height * (1.5 if planes else 3)
        use_cache = info.num_frames * frame_bytes <= budget
        cache: list[np.ndarray] = []
        cached_bytes = [0]
        # filters.gray_source=split: keep the luma of the split's downscaled frames
        share = use_cache and cfg.filters.for_source(res.source).gray_source == "split"
        split_gray: list[np.ndarray] = []

        def keep_gray(t: int, small_HW3: np.ndarray) -> None:
            split_gray.append(cv2.cvtColor(small_HW3, cv2.COLOR_RGB2GRAY))

        def frames_iter():
            caching = use_cache
            frames = reader.iter_planes() if planes and use_cache else reader.iter_frames()
            for f in frames:
                if caching:
                    cache.append(f)
                    cached_bytes[0] += f.nbytes
                    if cached_bytes[0] > budget:
                        caching = False
                        cache.clear()
                yield rgb_of(f)

        shots, res.split = self.splitter.detect(
            frames_iter(), info.num_frames, on_small=keep_gray if share else None
        )
        use_cache = use_cache and len(cache) == info.num_frames
        if use_cache:
            # every frame is cached: release the decoder now (decord keeps a worker thread
            # busy while a reader is open, stealing CPU from the filter stages)
            reader.close()
        tm["decode_split"] = time.perf_counter() - t

        def getter(start: int):
            if use_cache:
                return lambda idx: np.stack([rgb_of(cache[start + i]) for i in idx])
            return lambda idx: reader.get_batch([start + i for i in idx])

        clips: list[Clip] = []
        ts = info.timestamps_s
        for shot in shots:
            for a, b, why in self.splitter.clip_spans(shot, ts, info.fps):
                c = Clip(
                    key=f"{res.source_id}-{len(clips):04d}",
                    source=res.source,
                    index=len(clips),
                    start_frame=a,
                    end_frame=b,
                    start_s=float(ts[a]),
                    end_s=float(ts[b - 1] + 1.0 / info.fps),
                    fps=info.fps,
                    frames=ClipFrames(
                        b - a,
                        info.fps,
                        getter(a),
                        gray_base=(lambda i, a=a: split_gray[a + i]) if share else None,
                        gray_base_side=cfg.split.detect_short_side,
                    ),
                )
                if why is not None:
                    c.reject("split", why)
                clips.append(c)
        candidates = [c for c in clips if c.kept]
        stages = self.stages_for(res.source)
        pooled = [s for s in stages if is_model_stage(s)] if self.model_pool is not None else []
        for stage in stages:
            if pooled and is_model_stage(stage):
                continue  # the model stages are last: the pool runs them below
            stage.setup()  # no-op once set up (a stage only a per-source override enables)
            t = time.perf_counter()
            stage.process(candidates)
            tm[stage.name] = time.perf_counter() - t
        if pooled:
            t = time.perf_counter()
            self.model_pool.process(res.source, candidates, pooled)
            tm["model_pool"] = time.perf_counter() - t
        t = time.perf_counter()
        out_reader: FrameReader | None = None
        for c in clips:
            mid = c.frames.get([c.frames.num_frames // 2])[0]
            o = ClipOutcome(
                key=c.key,
                index=c.index,
                start_frame=c.start_frame,
                end_frame=c.end_frame,
                start_s=c.start_s,
                end_s=c.end_s,
                scores=dict(c.scores),
                rejected_stage=c.rejected_stage,
                reason=c.reason,
                thumb_jpeg=thumbnail_jpeg(mid),
                embedding=thumbnail_embedding(c.frames.get(c.frames.evenly(3))).tolist(),
            )
            if "clip_embedding" in c.extra:
                o.clip_embedding = [float(x) for x in c.extra["clip_embedding"]]
            if c.kept and self.encode:
                out_reader = self._encode(
                    info,
                    c,
                    o,
                    reader,
                    cache if use_cache else None,
                    out_reader,
                )
            res.clips.append(o)
        tm["encode"] = time.perf_counter() - t
        reader.close()
        if out_reader is not None and out_reader is not reader:
            out_reader.close()

    def _encode(
        self,
        info: VideoInfo,
        c: Clip,
        o: ClipOutcome,
        reader: FrameReader,
        cache,
        out_reader,
    ):
        cc = self.config.clip
        w, h = target_size(info.width, info.height, cc.short_side)
        # a VFR source is resampled to a constant rate: clip.fps, else its dominant rate
        fps = cc.fps if cc.fps is not None else (info.dominant_fps if info.vfr else None)
        if cache is not None and (w, h) == (reader.width, reader.height):
            src, get = reader, (lambda idx: (rgb_of(cache[i]) for i in idx))
        else:
            if out_reader is None:
                out_reader = open_reader(info, self._decode, cc.short_side)
            src = out_reader
            get = None
        if fps is None:
            fps = info.fps
            idx = np.arange(c.start_frame, c.end_frame)
        else:
            idx = resample_indices(info.timestamps_s, c.start_frame, c.end_frame, fps)
        if get is not None:
            frames = get(idx)
        elif len(idx) == c.end_frame - c.start_frame:
            frames = src.iter_frames(c.start_frame, c.end_frame)
        else:
            frames = (f for a in range(0, len(idx), 32) for f in src.get_batch(idx[a : a + 32]))
        planes = None
        if get is not None:  # cached frames at the clip size: I420 planes where the cache has them
            planes = [cache[i] for i in idx]
            if any(p.ndim != 2 for p in planes):
                planes = None  # RGB frames in the cache (decode.convert=swscale, other formats)
        o.mp4 = encode_mp4(
            planes if planes is not None else i420(resized(frames, w, h)),  # w, h even
            fps,
            codec=cc.codec,
            crf=cc.crf,
            preset=cc.preset,
            threads=max(1, self.config.decode.threads),
            frame_format="yuv420p",
            deterministic=cc.deterministic,
        )
        o.fps, o.num_frames, o.width, o.height = float(fps), len(idx), w, h
        return out_reader
