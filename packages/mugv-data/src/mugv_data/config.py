"""Typed configuration of a curation run: one frozen pydantic model per concern.

Precedence: CLI ``--set key=value`` > ``--input``/``--output`` flags > YAML file > defaults.
Every run writes the resolved config (``resolved_config.yaml``) beside its outputs.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from mugv_formats.config_loading import dump_config as dump_config  # re-exported
from mugv_formats.config_loading import load_config as load_typed_config
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Frozen(BaseModel):
    """Base of every config: immutable, unknown keys are an error, no float is NaN or
    infinite, and every numeric field declares its valid range (``Field`` bounds; the range
    filters' ``min``/``max`` are any finite numbers with ``min <= max``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class InputConfig(Frozen):
    """Where the raw videos are."""

    paths: list[str] = Field(default_factory=list)
    """Files, directories (searched recursively), glob patterns or ``@list.txt`` list files."""
    extensions: list[str] = Field(
        default_factory=lambda: [".mp4", ".webm", ".avi", ".mkv", ".mpg", ".mpeg", ".mov", ".m4v"]
    )
    """Extensions picked up when scanning directories (explicit files are always taken)."""


class DecodeConfig(Frozen):
    """Decoding and probing."""

    backend: Literal["auto", "decord", "pyav", "torchcodec"] = "auto"
    """``auto``: decord when installed and it agrees with PyAV on sampled frames, else PyAV;
    ``torchcodec``: torchcodec on ``device`` (mugv-data[nvdec]), checked against PyAV the same
    way (a disagreeing stream is decoded by PyAV, the reason recorded)."""
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$")
    """Where ``backend=torchcodec`` decodes: ``cpu`` (FFmpeg) or ``cuda[:N]`` (NVDEC)."""
    check_agreement: Literal["always", "risky", "never"] = "risky"
    """Compare decord and PyAV frames at a few indices and fall back to PyAV when they
    disagree: ``always``, or only for ``risky`` streams (MPEG-1/2 video, MPEG-PS/TS
    containers, first timestamp not 0, variable frame rate). Frame counts are always compared."""
    agreement_tolerance: float = Field(6.0, ge=0, le=255)
    """Max mean absolute pixel difference (0-255) for two decoders to count as agreeing."""
    analysis_short_side: int = Field(360, ge=32, le=8192)
    """Frames used for scoring are resized so their short side is at most this."""
    cache_mb: int = Field(1024, ge=0, le=1 << 30)
    """Keep every analysis frame of a source in memory up to this size; beyond it re-decode."""
    max_file_bytes: int = Field(64 << 30, gt=0)
    """Files larger than this are skipped (recorded as rejects)."""
    max_duration_s: float = Field(4 * 3600.0, gt=0)
    """Videos longer than this are skipped (recorded as rejects)."""
    vfr_tolerance: float = Field(0.05, ge=0, le=10)
    """Relative std of frame intervals above which a stream counts as variable frame rate."""
    threads: int = Field(1, ge=0, le=1024)
    """Decoder threads per worker (0: decoder default)."""
    convert: Literal["swscale", "opencv"] = "swscale"
    """How PyAV readers (``backend=pyav`` and every fallback to PyAV) turn decoded frames into
    RGB at the analysis size: ``swscale`` (PyAV's ``to_ndarray``) or ``opencv``: ``yuv420p``
    frames are scaled in YUV by swscale (bilinear, as the RGB path) and converted by OpenCV
    (BT.601 limited range, ~1 level brighter than swscale's default conversion); the frame
    cache holds the I420 planes (half the bytes of RGB) and kept clips are encoded from them
    without an RGB round trip. Other pixel formats use swscale."""


class SplitConfig(Frozen):
    """Shot splitting (PySceneDetect detectors + a twin-comparison dissolve detector)."""

    content_threshold: float = Field(27.0, gt=0, le=255)
    """ContentDetector threshold for hard cuts (HSV delta, 0-255)."""
    adaptive: bool = False
    """Use AdaptiveDetector (robust to fast camera motion) instead of ContentDetector."""
    fade_threshold: float = Field(12.0, ge=0, le=255)
    """ThresholdDetector luma level for fades to/from black (0 disables)."""
    dissolve: bool = True
    """Detect gradual transitions (dissolves) with twin comparison."""
    dissolve_low: float = Field(0.06, gt=0, lt=1)
    """Frame-to-frame colour-histogram distance (0-1) above which a frame may belong to a
    gradual transition."""
    dissolve_high: float = Field(0.4, gt=0, le=1)
    """Histogram distance between the ends of a candidate that makes it a transition."""
    dissolve_window: int = Field(6, ge=2, le=100_000)
    """Minimum number of frames of a gradual transition."""
    min_scene_frames: int = Field(8, ge=1, le=100_000)
    """Minimum distance between two detected cuts, in frames."""
    trim_frames: int = Field(2, ge=0, le=100_000)
    """Frames dropped at each side of a shot (transition remnants)."""
    min_clip_s: float = Field(2.0, gt=0, le=86_400)
    """Shots shorter than this are rejected."""
    max_clip_s: float = Field(10.0, gt=0, le=86_400)
    """Longer shots are cut into consecutive clips of at most this length."""
    detect_short_side: int = Field(144, ge=16, le=8192)
    """Resolution (short side) at which shots are detected."""

    @model_validator(mode="after")
    def _check(self) -> SplitConfig:
        if self.max_clip_s < self.min_clip_s:
            raise ValueError(
                f"split.max_clip_s={self.max_clip_s} < split.min_clip_s={self.min_clip_s}"
            )
        if self.dissolve_high <= self.dissolve_low:
            raise ValueError(f"split.dissolve_high={self.dissolve_high} must exceed dissolve_low")
        return self


class ClipConfig(Frozen):
    """How kept clips are re-encoded."""

    fps: float | None = Field(None, gt=0, le=1000)
    """Normalise every clip to this frame rate (None: keep the source rate; VFR sources are
    always resampled to their dominant rate, the rate of their most common frame interval)."""
    short_side: int | None = Field(None, ge=16, le=8192)
    """Resize so the short side is this (None: keep size). Never upscales."""
    crf: int = Field(20, ge=0, le=51)
    preset: str = "veryfast"
    codec: str = "libx264"
    deterministic: bool = False
    """The same frames give the same bytes on every run (libx264's mb-tree off, see
    ``mugv_formats.video.encode_mp4``): with mb-tree the bundled libx264 can encode the same
    clip differently from one run to the next (seen at 144x176; 360p sample clips were
    reproducible), and without it a clip costs +3 % to +52 % bytes at the same ``crf``."""


class RangeFilterConfig(Frozen):
    """A score kept within ``[min, max]`` (either bound may be None)."""

    enabled: bool = True
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _check_range(self) -> RangeFilterConfig:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min={self.min} > max={self.max}: no clip could pass")
        return self


class SharpnessConfig(RangeFilterConfig):
    min: float | None = 200.0
    max: float | None = 2000.0
    num_frames: int = Field(3, ge=1, le=1000)
    rule: Literal["mean", "every"] = "mean"
    """``mean``: the mean Laplacian variance of the sampled frames is in range (our default);
    ``every``: every sampled frame is in range (the MUG-V report's rule)."""


class MotionConfig(RangeFilterConfig):
    min: float | None = 1.0
    max: float | None = 20.0
    frame_gap: int = Field(1, ge=1, le=1000)
    """Distance (frames) between the two frames of each of the 3 pairs."""
    flow_short_side: int = Field(128, ge=16, le=8192)
    """Resolution (short side) at which flow is computed (never upscaled)."""
    method: Literal["farneback", "raft"] = "farneback"
    """``raft``: torchvision RAFT (needs torchvision and local weights; meant for GPUs)."""
    raft_weights: str | None = None
    """Local state dict of torchvision ``raft_large`` / ``raft_small`` (see raft_small)."""
    raft_small: bool = False
    device: str = "cuda"
    units_short_side: int = Field(256, ge=16, le=8192)
    """Motion is reported in pixels of a frame with this short side, whatever the compute and
    source resolutions, so thresholds do not depend on either."""


class BorderConfig(RangeFilterConfig):
    max: float | None = 0.15
    luma_threshold: float = Field(20.0, ge=0, le=255)
    """Luma (0-255) at or below which a row or column counts as black border."""
    num_frames: int = Field(3, ge=1, le=1000)


class StaticConfig(RangeFilterConfig):
    min: float | None = 0.5
    """Min mean absolute frame difference (0-255) between frames across the clip."""
    max_frozen_ratio: float = Field(0.5, ge=0, le=1)
    """Max fraction of consecutive frame pairs that are identical (frozen)."""
    frozen_eps: float = Field(0.25, ge=0, le=255)
    """Mean absolute difference (0-255) at or below which two frames count as identical."""


class BrightnessConfig(RangeFilterConfig):
    min: float | None = 20.0
    max: float | None = 235.0
    num_frames: int = Field(3, ge=1, le=1000)


class TextConfig(RangeFilterConfig):
    max: float | None = 0.02
    num_frames: int = Field(1, ge=1, le=1000)
    """Frames (evenly spaced) on which text is detected; the max ratio is the score."""
    det_limit_side: int = Field(640, ge=32, le=8192)


class TrackConfig(RangeFilterConfig):
    """The per-pair motion track the shake and speed stages share (``stages/camera.py``;
    computed once per clip when both use the same track settings)."""

    num_pairs: int = Field(24, ge=2, le=10_000)
    """Consecutive-frame pairs spread evenly over the clip."""
    track_short_side: int = Field(128, ge=16, le=8192)
    """Resolution (short side) at which points are tracked (never upscaled)."""
    units_short_side: int = Field(256, ge=16, le=8192)
    """Pixels are reported at this short side (as ``filters.motion``)."""


class ShakeConfig(TrackConfig):
    """Camera shake: RMS jitter (px/frame at units_short_side) of the global motion track
    around its smoothed path."""

    max: float | None = 1.0
    smooth_pairs: int = Field(5, ge=1, le=10_000)
    """Window (pairs) of the centred moving average that defines the smooth path."""


class SpeedConfig(TrackConfig):
    """Speed-altered footage (``speed_change``: largest |log2| ratio of the median flow before
    and after a point) and effects (``diff_spike``: largest frame difference over the median)."""

    max: float | None = 1.0
    window: int = Field(6, ge=1, le=10_000)
    """Pairs on each side of a point whose median flow magnitudes are compared."""
    eps: float = Field(0.5, gt=0, le=1e6)
    """Added to both medians (px/frame) so still footage's noise does not count as a change."""
    max_diff_spike: float | None = Field(8.0, ge=1, le=1e9)
    """Reject above this ``diff_spike`` (None: record only)."""


class AestheticConfig(RangeFilterConfig):
    enabled: bool = False
    min: float | None = 4.5
    clip_path: str | None = None
    """Local Hugging Face folder of a CLIP model (e.g. clip-vit-large-patch14)."""
    head_path: str | None = None
    """Local LAION aesthetic MLP weights (.pth / .safetensors)."""
    device: str = "cuda"
    batch_size: int = Field(32, ge=1, le=65536)
    num_frames: int = Field(1, ge=1, le=1000)


class ClipEmbeddingConfig(Frozen):
    """CLIP image embeddings from an open_clip model (``stages/clip_embedding.py``) for dedup;
    rejects nothing. Local weights only: ``model_path`` or ``model`` + ``weights``."""

    enabled: bool = False
    model_path: str | None = None
    """Local open_clip model folder (``open_clip_config.json`` + ``open_clip_model.safetensors``,
    the layout of open_clip checkpoints on the Hugging Face hub)."""
    model: str = "ViT-L-14"
    """open_clip architecture name (``open_clip.list_models()``), used with ``weights``."""
    weights: str | None = None
    """Local checkpoint of ``model`` (.safetensors, or .bin/.pt read with weights_only)."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: str = "cpu"
    batch_size: int = Field(32, ge=1, le=65536)
    num_frames: int = Field(1, ge=1, le=1000)
    """Evenly spaced frames per clip; the clip's embedding is their normalised mean."""


class ClassifierConfig(Frozen):
    """A local Hugging Face image/video classification checkpoint that rejects by label and
    score (``stages/classifier.py``)."""

    enabled: bool = False
    model_path: str | None = None
    """Local folder of an ``AutoModelFor{Image,Video}Classification`` checkpoint + processor."""
    task: Literal["image", "video"] = "image"
    reject_labels: list[str] = Field(default_factory=list)
    """Labels (the checkpoint's ``id2label`` names) that reject a clip."""
    threshold: float = Field(0.5, ge=0, le=1)
    """Reject when a reject label's probability (mean over frames for images) is >= this."""
    num_frames: int = Field(4, ge=1, le=1000)
    """Evenly spaced frames per clip (images: each classified; video: the clip input)."""
    batch_size: int = Field(16, ge=1, le=65536)
    device: str = "cpu"


class FiltersConfig(Frozen):
    sharpness: SharpnessConfig = SharpnessConfig()
    motion: MotionConfig = MotionConfig()
    borders: BorderConfig = BorderConfig()
    static: StaticConfig = StaticConfig()
    brightness: BrightnessConfig = BrightnessConfig()
    text: TextConfig = TextConfig()
    aesthetic: AestheticConfig = AestheticConfig()
    shake: ShakeConfig = ShakeConfig()
    speed: SpeedConfig = SpeedConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    clip_embedding: ClipEmbeddingConfig = ClipEmbeddingConfig()
    short_circuit: bool = False
    """Stop scoring a clip at its first rejection (faster; histograms then miss scores)."""
    gray_source: Literal["analysis", "split"] = "analysis"
    """Where the low-resolution luma frames of the motion, static, shake and speed stages
    (short side <= ``split.detect_short_side``) come from. ``analysis`` (default): the luma of
    the analysis frame, area-downscaled. ``split`` (opt-in, faster): the luma of the shot
    split's downscaled frame (``split.detect_short_side``, kept for every frame of a cached
    source: ~5 % of ``decode.cache_mb``), area-downscaled from there: the frames differ by a
    few grey levels, so scores move slightly. Sources too long for the frame cache use
    ``analysis``."""
    per_source: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Overrides of these filter settings for sources whose absolute path matches a glob
    (``fnmatch``: ``*`` also matches ``/``), e.g. ``{"*/phone/*": {sharpness: {min: 100}}}``;
    every matching glob applies, in the order given. Thresholds and scoring settings only:
    the settings a stage reads when it loads its model (SETUP_KEYS) stay the run's."""

    @model_validator(mode="after")
    def _check_per_source(self) -> FiltersConfig:
        for glob, override in self.per_source.items():
            bad = _setup_keys_in(override)
            if bad:
                raise ValueError(
                    f"filters.per_source[{glob!r}]: {', '.join(bad)} cannot differ per source "
                    "(set when the stage loads its model)"
                )
            try:
                self._merged(override)
            except ValueError as e:
                raise ValueError(f"filters.per_source[{glob!r}]: {e}") from None
        return self

    def _merged(self, override: dict[str, Any]) -> FiltersConfig:
        if "per_source" in override:
            raise ValueError("per_source cannot be nested")
        base = self.model_dump(exclude={"per_source"})
        return FiltersConfig.model_validate(_deep_update(base, override))

    def globs_for(self, source: str) -> tuple[str, ...]:
        """The ``per_source`` globs that match one source path, in the order given."""
        return tuple(g for g in self.per_source if fnmatch.fnmatchcase(source, g))

    def for_source(self, source: str) -> FiltersConfig:
        """The filter settings for one source path (self when no glob matches)."""
        return self.for_globs(self.globs_for(source))

    def for_globs(self, globs: tuple[str, ...]) -> FiltersConfig:
        """The filter settings with the overrides of ``globs`` (keys of ``per_source``)
        applied in that order (self when there are none)."""
        if not globs:
            return self
        merged: dict[str, Any] = {}
        for g in globs:
            merged = _deep_update(merged, self.per_source[g])
        return self._merged(merged)


SETUP_KEYS = frozenset(
    {
        "clip_path",
        "head_path",
        "device",
        "model_path",
        "task",
        "method",
        "raft_weights",
        "raft_small",
        "det_limit_side",
        "batch_size",
        "model",
        "weights",
        "precision",
    }
)


def _setup_keys_in(override: dict[str, Any]) -> list[str]:
    out = []
    for section, v in override.items():
        if isinstance(v, dict):
            out += [f"{section}.{k}" for k in v if k in SETUP_KEYS]
    return out


def _deep_update(base: dict[str, Any], upd: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in upd.items():
        out[k] = (
            _deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


class CaptionConfig(Frozen):
    source: Literal["none", "sidecar", "table", "vlm"] = "none"
    """``sidecar``: VIDEO.txt next to each video; ``table``: a CSV/JSONL with source,caption
    (optional start_s,end_s); ``vlm``: a Qwen2-VL model from a local folder."""
    table_path: str | None = None
    model_path: str | None = None
    backend: Literal["transformers", "vllm"] = "transformers"
    """How ``source: vlm`` runs the model: ``transformers`` (default, batched ``generate``) or
    ``vllm`` (vLLM's offline engine on the GPU; optional: needs the ``vllm`` package, which
    mugv-data does not install; ``device`` is then vLLM's choice)."""
    device: str = "cuda"
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    batch_size: int = Field(8, ge=1, le=65536)
    num_frames: int = Field(8, ge=1, le=1000)
    frame_short_side: int = Field(224, ge=28, le=8192)
    max_new_tokens: int = Field(96, ge=1, le=100_000)
    prompt: str = "Describe this video in detail: subjects, actions, scene, camera motion."


class TagConfig(Frozen):
    enabled: bool = True
    vocabulary: dict[str, list[str]] | None = None
    """Tag -> keywords; None uses the built-in vocabulary."""


class DedupConfig(Frozen):
    enabled: bool = True
    threshold: float = Field(0.97, gt=0, le=1)
    """Cosine similarity at or above which the later clip is a near duplicate."""
    embedding: Literal["auto", "thumbnail", "clip"] = "auto"
    """``auto``: CLIP embeddings when every clip has one (``filters.clip_embedding``, an
    open_clip model, or the aesthetic stage's CLIP), else thumbnail embeddings."""
    method: Literal["auto", "exact", "clustered"] = "auto"
    """``exact``: all pairs (O(N^2)); ``clustered``: faiss k-means clusters searched one at a
    time (``mugv_data.dedup``); ``auto``: exact up to ``exact_max_clips`` clips."""
    exact_max_clips: int = Field(20000, ge=0, le=1 << 40)
    clusters: int = Field(0, ge=0, le=1 << 24)
    """k-means clusters of the clustered search (0: about sqrt(N))."""
    max_probe: int = Field(4, ge=1, le=1 << 16)
    """Clusters a clip is searched in at most (its own + guests within reach of the threshold)."""
    memory_mb: int = Field(1024, ge=0, le=1 << 30)
    """Member vectors held at once by the clustered search (one pass over the store per batch)."""
    seed: int = Field(0, ge=0, le=2**63 - 1)
    """k-means seed (the search is deterministic for a given seed)."""


class BalanceConfig(Frozen):
    enabled: bool = True
    alpha: float = Field(0.5, ge=0, le=1)
    """Weight = mean over tags of count(tag)^-alpha, normalised to mean 1."""


class ModelPoolConfig(Frozen):
    """Ray and process engines: a pool of actors (Ray actors, or model-server processes)
    holding the model stages (aesthetic, classifier, clip_embedding) that the per-source (CPU)
    workers feed (``mugv_data/model_pool.py``, ``mugv_data/model_servers.py``)."""

    actors: int = Field(0, ge=0, le=65536)
    """Pool actors / model servers (0: the per-source workers hold the models themselves, the
    only mode of the sequential engine, which ignores this section)."""
    gpus: float = Field(1.0, ge=0, le=64)
    """GPUs per actor (Ray ``num_gpus``; the process engine pins ``1 / gpus`` servers to each
    visible GPU) when a model stage runs on CUDA; 0 when all run on CPU."""
    cpus: float = Field(1.0, ge=0, le=1024)
    """CPUs per actor (Ray ``num_cpus``; the process engine's automatic worker count leaves
    them to the servers)."""
    memory_mb: float = Field(0.0, ge=0, le=1 << 24)
    """Host memory per actor (Ray ``memory``; 0: not declared; not used by the process
    engine)."""
    batch_clips: int = Field(16, ge=1, le=65536)
    """Clips per request (each carries only the frames the model stages read)."""
    max_in_flight: int = Field(2, ge=1, le=1024)
    """Requests one per-source worker keeps in flight (backpressure)."""
    max_restarts: int = Field(3, ge=0, le=1000)
    """Times a lost pool actor is restarted, per actor (Ray restarts the actor; the process
    engine replaces the model server), one that died or did not answer within
    ``request_timeout_s``; its unanswered requests are sent again (each to at most two actor
    processes). Past that the run stops; a second run resumes it."""
    request_timeout_s: float | None = Field(600.0, gt=0, le=86400)
    """Seconds a per-source worker waits for a pool actor's (model server's) answer (counted
    from when the request was sent or that actor's previous answer to the worker came,
    whichever is later, so it includes waiting behind other workers' requests, at most
    ``workers x max_in_flight`` batches); one past it is taken as hung, killed and replaced
    (process engine: by the driver's supervisor; Ray: ``ray.kill(no_restart=False)``, Ray
    restarts it, counted against ``max_restarts``) and the request sent again. On Ray it also
    bounds the wait for a restarted actor to load its models (at least 60 s). None: wait for
    ever."""


class EngineConfig(Frozen):
    kind: Literal["sequential", "process", "ray"] = "process"
    workers: int = Field(0, ge=0, le=65536)
    """Worker processes/actors (0: one per available CPU)."""
    ray_address: str | None = None
    """Join this Ray cluster (``auto`` or ``ray://host:port``); None starts a local one."""
    ray_num_cpus: int | None = Field(None, ge=1, le=1 << 20)
    """CPUs of a locally started Ray (None: all)."""
    max_in_flight: int = Field(2, ge=1, le=1024)
    """Work units submitted per worker and not yet returned (backpressure: the driver holds
    at most ``workers * max_in_flight`` results)."""
    max_unit_attempts: int = Field(3, ge=1, le=100)
    """Ray: times a unit is run when its worker is lost (a node gone, a killed actor)."""
    model_pool: ModelPoolConfig = ModelPoolConfig()


class OutputConfig(Frozen):
    path: str | None = None
    clips_per_shard: int = Field(64, ge=1, le=1_000_000)
    report_thumbnails: int = Field(48, ge=0, le=100_000)
    """Max thumbnails of kept and of rejected clips in the HTML report."""


class CurateConfig(Frozen):
    """Everything a curation run needs."""

    input: InputConfig = InputConfig()
    decode: DecodeConfig = DecodeConfig()
    split: SplitConfig = SplitConfig()
    clip: ClipConfig = ClipConfig()
    filters: FiltersConfig = FiltersConfig()
    captions: CaptionConfig = CaptionConfig()
    tags: TagConfig = TagConfig()
    dedup: DedupConfig = DedupConfig()
    balance: BalanceConfig = BalanceConfig()
    engine: EngineConfig = EngineConfig()
    output: OutputConfig = OutputConfig()


def load_config(
    path: str | Path | None = None,
    *,
    overrides: Iterable[str] | None = None,
    inputs: list[str] | None = None,
    output: str | None = None,
) -> CurateConfig:
    """Load a YAML config, apply the ``--input``/``--output`` flags and ``--set`` overrides,
    validate (mugv_formats.config_loading: list indices, one-line ConfigError naming file,
    field and value)."""
    flags = {
        "input.paths": list(inputs) if inputs else None,
        "output.path": str(output) if output else None,
    }
    return load_typed_config(CurateConfig, path, overrides, flags=flags)
