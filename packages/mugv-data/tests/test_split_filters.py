"""Shot splitting and the CPU filters against independent references."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
from mugv_data.config import (
    BorderConfig,
    BrightnessConfig,
    MotionConfig,
    SharpnessConfig,
    SplitConfig,
    StaticConfig,
    TextConfig,
)
from mugv_data.mp4_writer import resample_indices
from mugv_data.stages.base import Clip, ClipFrames
from mugv_data.stages.filters import (
    BorderFilter,
    BrightnessFilter,
    MotionFilter,
    SharpnessFilter,
    StaticFilter,
    laplacian_variance,
)
from mugv_data.stages.split import ShotSplitter, shots_from_spans
from mugv_data.stages.text import TextFilter
from mugv_data.synth import dissolve, scene


def make_clip(frames: list[np.ndarray], fps: float = 25.0) -> Clip:
    arr = np.stack(frames)
    return Clip(
        key="k-0000",
        source="s",
        index=0,
        start_frame=0,
        end_frame=len(arr),
        start_s=0.0,
        end_s=len(arr) / fps,
        fps=fps,
        frames=ClipFrames(len(arr), fps, lambda idx: arr[list(idx)]),
    )


def test_split_hard_cut_and_dissolve():
    a, b, c = scene(30, seed=1), scene(46, seed=2), scene(46, seed=3)
    frames = a + b[:30] + dissolve(b[30:], c[:16]) + c[16:]
    shots, info = ShotSplitter(SplitConfig(trim_frames=2)).detect(iter(frames), len(frames))
    assert info["cuts"] == [30]
    assert len(info["dissolves"]) == 1
    d0, d1 = info["dissolves"][0]
    assert 58 <= d0 <= 61 and 75 <= d1 <= 78  # the cross-fade occupies frames 60..75
    assert [(s.start, s.end) for s in shots][:2] == [(0, 28), (32, d0 - 2)]
    assert shots[-1].start == d1 + 2 and shots[-1].end == len(frames)


@pytest.mark.parametrize("adaptive", [False, True])
def test_fast_content_score_is_bit_identical_to_scenedetect(samples, adaptive):
    """The OpenCV frame score equals PySceneDetect's numpy one on real frames (and cuts)."""
    from mugv_data.decode import DecordReader
    from mugv_data.probe import probe_video
    from mugv_data.stages.split import _fast_detector_classes, _resize_short
    from scenedetect.detectors import AdaptiveDetector, ContentDetector

    info = probe_video(samples / "bikes.mp4")
    reader = DecordReader(info, 360)
    frames = [
        cv2.cvtColor(_resize_short(f, 144), cv2.COLOR_RGB2BGR)
        for f in reader.get_batch(range(0, 250, 2))
    ]
    reader.close()
    fast_cls = _fast_detector_classes()[0 if adaptive else 1]
    ref_cls = AdaptiveDetector if adaptive else ContentDetector
    fast, ref = fast_cls(min_scene_len=4), ref_cls(min_scene_len=4)
    fast_scores, ref_scores, fast_cuts, ref_cuts = [], [], [], []
    for t, f in enumerate(frames):
        fast_cuts += fast.process_frame(t, f)
        ref_cuts += ref.process_frame(t, f)
        fast_scores.append(fast._frame_score)
        ref_scores.append(ref._frame_score)
    assert fast._mugv_last_hsv is not None  # the OpenCV path ran
    assert max(ref_scores) > 1.0  # real content changes, not all-equal frames
    assert fast_scores == ref_scores
    assert fast_cuts + fast.post_process(len(frames)) == ref_cuts + ref.post_process(len(frames))


def test_fade_detector_frame_mean_is_bit_identical_to_scenedetect():
    """The splitter hands ThresholdDetector its frame mean (cv2.sumElems) instead of letting it
    call numpy.mean: the same float on any frame, and the same fade cuts as the library."""
    from mugv_data.stages.split import _FrameMean
    from scenedetect.detectors import ThresholdDetector

    rng = np.random.default_rng(0)
    m = _FrameMean()
    for h, w in [(1, 1), (3, 5), (144, 256), (271, 481), (1080, 1920)]:
        for f in (
            rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            np.full((h, w, 3), 255, np.uint8),
            rng.integers(250, 256, (h, w, 3), dtype=np.uint8),
        ):
            m.set(0, f)
            assert m.value == np.mean(f)
    # a fade to black and back: cuts of the splitter's detector == the library's own
    a, b = scene(40, seed=1), scene(40, seed=2)
    ramp = [
        np.clip(f.astype(np.float64) * k, 0, 255).astype(np.uint8)
        for f, k in zip(
            a[20:] + b[:20], np.r_[np.linspace(1, 0, 20), np.linspace(0, 1, 20)], strict=True
        )
    ]
    frames = a[:20] + ramp + b[20:]
    cfg = SplitConfig(dissolve=False)
    splitter = ShotSplitter(cfg)
    ours = next(d for d in splitter._detectors() if isinstance(d, ThresholdDetector))
    ref = ThresholdDetector(threshold=cfg.fade_threshold, min_scene_len=cfg.min_scene_frames)
    cuts_ours, cuts_ref = [], []
    for t, f in enumerate(frames):
        bgr = cv2.cvtColor(f, cv2.COLOR_RGB2BGR)
        ours.stats_manager.set(t, bgr)
        cuts_ours += ours.process_frame(t, bgr)
        cuts_ref += ref.process_frame(t, bgr)
    cuts_ours += ours.post_process(len(frames))
    cuts_ref += ref.post_process(len(frames))
    assert cuts_ref and cuts_ours == cuts_ref
    _shots, info = splitter.detect(iter(frames), len(frames))
    assert set(cuts_ref) <= set(info["cuts"])


def test_split_fast_pan_is_one_shot():
    frames = scene(90, seed=5, speed=4)
    shots, info = ShotSplitter(SplitConfig()).detect(iter(frames), len(frames))
    assert [(s.start, s.end) for s in shots] == [(0, 90)]
    assert info == {"cuts": [], "dissolves": []}


def test_clip_spans_min_max_duration():
    sp = ShotSplitter(SplitConfig(min_clip_s=1.0, max_clip_s=2.0))
    ts = np.arange(300) / 25.0
    from mugv_data.stages.split import Shot

    assert sp.clip_spans(Shot(0, 130), ts, 25.0) == [
        (0, 50, None),
        (50, 100, None),
        (100, 130, None),
    ]
    ((a, b, why),) = sp.clip_spans(Shot(0, 20), ts, 25.0)
    assert (a, b) == (0, 20) and why == "shot 0.80 s < split.min_clip_s 1"
    spans = sp.clip_spans(Shot(0, 110), ts, 25.0)  # 4.4 s -> 2 + 2 + a 0.4 s tail, recorded
    assert spans[:2] == [(0, 50, None), (50, 100, None)]
    assert spans[2] == (100, 110, "tail of shot 0.40 s < split.min_clip_s 1")
    assert shots_from_spans(10, [(4, 4), (3, 6)], 0) == [
        type(shots_from_spans(10, [], 0)[0])(0, 3),
        type(shots_from_spans(10, [], 0)[0])(6, 10),
    ]


def test_resample_indices_to_lower_fps_and_vfr():
    ts = np.arange(100) / 30.0
    idx = resample_indices(ts, 10, 70, 15.0)  # 2 s at 15 fps -> every other frame
    assert list(idx) == list(range(10, 70, 2))
    vfr = np.cumsum([0] + [0.04 if i % 2 else 0.08 for i in range(59)])
    idx = resample_indices(vfr, 0, 60, 25.0)
    assert np.all(np.diff(idx) >= 0) and idx[-1] <= 59
    assert np.all(vfr[idx] <= np.arange(len(idx)) / 25.0 + 1e-9)


def test_laplacian_variance_matches_float64_reference():
    rng = np.random.default_rng(0)
    g = rng.integers(0, 256, (37, 53)).astype(np.uint8)
    p = np.pad(g.astype(np.float64), 1, mode="reflect")  # OpenCV's default BORDER_REFLECT_101
    lap = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * p[1:-1, 1:-1]
    assert laplacian_variance(g) == pytest.approx(lap.var(), rel=1e-12)


def test_sharpness_filter_rejects_blur():
    sharp = scene(10, seed=1)
    blurred = [cv2.GaussianBlur(f, (0, 0), 3) for f in sharp]
    f = SharpnessFilter(SharpnessConfig(min=50, max=None))
    cs, cb = make_clip(sharp), make_clip(blurred)
    f.process([cs, cb])
    assert cs.scores["sharpness"] > 10 * cb.scores["sharpness"]
    assert cs.kept and cb.rejected_stage == "sharpness" and "< min 50" in cb.reason


def test_motion_matches_known_translation():
    # 96x128 frames moving 3 px/frame; flow at full size, reported in 256p pixels: 3 * 256/96 = 8
    f = MotionFilter(MotionConfig(min=1, max=20, flow_short_side=512, units_short_side=256))
    moving, still = make_clip(scene(30, speed=3.0, seed=2)), make_clip([scene(1, seed=2)[0]] * 30)
    f.process([moving, still])
    # interior flow is the shift; borders (where content leaves the frame) pull it down a bit
    assert 0.8 * 8 < moving.scores["motion"] < 1.1 * 8
    assert still.scores["motion"] < 0.1 and still.rejected_stage == "motion"
    assert moving.kept
    assert f.pairs(30) == [(0, 1), (15, 16), (28, 29)]
    # computing at a lower resolution reports the same motion in the same units
    big = [
        cv2.resize(x, (512, 384), interpolation=cv2.INTER_CUBIC)
        for x in scene(6, speed=1.0, seed=3)
    ]
    hi = make_clip(big)
    lo = make_clip(big)
    MotionFilter(MotionConfig(flow_short_side=384)).process([hi])
    MotionFilter(MotionConfig(flow_short_side=128)).process([lo])
    assert lo.scores["motion"] == pytest.approx(hi.scores["motion"], rel=0.1)
    assert hi.scores["motion"] == pytest.approx(4 * 256 / 384, rel=0.2)


def test_filters_share_one_gray_frame_set_and_match_references():
    """Every frame is fetched once across the CPU filters; scores equal float64 references."""
    arr = np.stack(scene(40, h=192, w=256, seed=7))
    fetched: list[int] = []

    def get(idx):
        fetched.extend(idx)
        return arr[list(idx)]

    clip = make_clip(list(arr))
    clip.frames = ClipFrames(len(arr), 25.0, get)
    for stage in (
        BrightnessFilter(BrightnessConfig(min=None, max=None)),
        BorderFilter(BorderConfig(max=None)),
        StaticFilter(StaticConfig(min=None, max_frozen_ratio=1.0)),
        SharpnessFilter(SharpnessConfig(min=None, max=None)),
        MotionFilter(MotionConfig(min=None, max=None, flow_short_side=128)),
    ):
        stage.process([clip])
    assert sorted(fetched) == sorted(set(fetched))
    g = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in arr]
    idx = clip.frames.evenly(3)
    assert clip.scores["brightness"] == pytest.approx(np.mean([g[i].mean() for i in idx]), 1e-12)
    lap = [cv2.Laplacian(g[i].astype(np.float64), cv2.CV_64F).var() for i in idx]
    assert clip.scores["sharpness"] == pytest.approx(np.mean(lap), rel=1e-9)
    small = [cv2.resize(x, (171, 128), interpolation=cv2.INTER_AREA).astype(np.float64) for x in g]
    spread = clip.frames.evenly(5)
    ref = np.mean([np.abs(small[a] - small[b]).mean() for a, b in itertools.pairwise(spread)])
    assert clip.scores["static_diff"] == pytest.approx(ref, rel=1e-12)
    flows = [
        cv2.calcOpticalFlowFarneback(
            small[a].astype(np.uint8), small[b].astype(np.uint8), None, 0.5, 3, 15, 3, 5, 1.2, 0
        ).astype(np.float64)
        for a, b in MotionFilter(MotionConfig()).pairs(40)
    ]
    ref_motion = np.mean([np.sqrt((fl**2).sum(-1)).mean() * 256 / 128 for fl in flows])
    assert clip.scores["motion"] == pytest.approx(ref_motion, rel=1e-6)
    assert clip.scores["motion"] > 1.0  # the scene pans: a real flow, not zeros


def test_border_ratio_letterbox():
    frames = scene(5, seed=3)
    boxed = [f.copy() for f in frames]
    for f in boxed:
        f[:16] = 0
        f[-16:] = 0
    f = BorderFilter(BorderConfig(max=0.15))
    a, b = make_clip(frames), make_clip(boxed)
    f.process([a, b])
    assert a.scores["border_ratio"] == pytest.approx(0.0, abs=0.02)
    assert b.scores["border_ratio"] == pytest.approx(32 / 96, abs=0.02)
    assert a.kept and b.rejected_stage == "borders"


def test_static_and_frozen():
    f = StaticFilter(StaticConfig())
    frozen = make_clip([scene(1, seed=4)[0]] * 40)
    half = scene(20, seed=4)
    stutter = make_clip([x for x in half for _ in range(2)])  # every frame shown twice
    moving = make_clip(scene(40, seed=4))
    f.process([frozen, stutter, moving])
    assert frozen.scores["static_diff"] == 0.0 and frozen.scores["frozen_ratio"] == 1.0
    assert frozen.rejected_stage == "static"
    assert moving.kept and moving.scores["frozen_ratio"] == 0.0 and moving.scores["static_diff"] > 1
    assert 0.3 <= stutter.scores["frozen_ratio"] <= 0.7


def test_brightness():
    dark = make_clip([np.full((32, 32, 3), 10, np.uint8)] * 4)
    ok = make_clip([np.full((32, 32, 3), 128, np.uint8)] * 4)
    f = BrightnessFilter(BrightnessConfig())
    f.process([dark, ok])
    assert dark.scores["brightness"] == pytest.approx(10) and dark.rejected_stage == "brightness"
    assert ok.kept


def test_text_area_ratio_with_real_detector():
    base = np.full((240, 320, 3), 200, np.uint8)
    texty = base.copy()
    cv2.putText(texty, "BREAKING NEWS", (10, 200), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (0, 0, 0), 3)
    cv2.putText(texty, "subscribe now", (10, 60), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (20, 20, 20), 2)
    f = TextFilter(TextConfig(max=0.02))
    f.setup()
    a, b = make_clip([base] * 3), make_clip([texty] * 3)
    f.process([a, b])
    assert a.scores["text_ratio"] == 0.0 and a.kept
    assert 0.04 < b.scores["text_ratio"] < 0.5 and b.rejected_stage == "text"


def test_text_detector_direct_path_matches_rapidocr_pipeline(samples):
    """Table normalisation gives rapidocr's exact network input; boxes equal its full path."""
    from mugv_data.decode import DecordReader
    from mugv_data.probe import probe_video
    from mugv_data.stages.text import TextDetector
    from rapidocr.ch_ppocr_det.utils import DetPreProcess

    reader = DecordReader(probe_video(samples / "bikes.mp4"), 360)
    frame = reader.get_batch([60])[0].copy()
    reader.close()
    cv2.putText(frame, "BREAKING NEWS", (10, 200), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255,) * 3, 2)
    cv2.putText(frame, "live 24/7", (300, 60), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1)
    det = TextDetector(640)
    bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    ref_in = DetPreProcess(640, "max", [0.5] * 3, [0.5] * 3)(bgr)
    assert np.array_equal(det._det.get_preprocess()(bgr), ref_in)
    assert det._is_direct(*frame.shape[:2])
    ref = det._engine(bgr, use_det=True, use_cls=False, use_rec=False).boxes
    boxes = det.boxes(frame)
    assert len(boxes) >= 2 and np.array_equal(boxes, np.asarray(ref))
    # frames rapidocr would resize or pad take its full path (and still detect)
    assert not det._is_direct(24, 200) and not det._is_direct(40, 400)
    tiny = cv2.resize(frame[180:215, 0:260], (260, 24), interpolation=cv2.INTER_AREA)
    assert det.area_ratio(tiny) > 0.1


def test_gray_base_serves_low_resolution_requests_only():
    """ClipFrames with a gray_base (filters.gray_source=split): requests at or below its side
    are area-downscaled from the base; full-resolution and larger requests use the frame."""
    from mugv_data.stages.base import resize_short
    from mugv_data.stages.split import _resize_short

    arr = np.stack(scene(6, 360, 640, seed=3))
    base_calls = []

    def base(i):
        base_calls.append(i)
        return cv2.cvtColor(_resize_short(arr[i], 144), cv2.COLOR_RGB2GRAY)

    cf = ClipFrames(6, 25.0, lambda idx: arr[list(idx)], gray_base=base, gray_base_side=144)
    got = cf.gray([0, 4], 128)
    for i, g in zip([0, 4], got, strict=True):
        ref = cv2.resize(base(i), (228, 128), interpolation=cv2.INTER_AREA)
        assert g.shape == (128, 228) and np.array_equal(g, ref)
    full = cf.gray([1])[0]
    assert np.array_equal(full, cv2.cvtColor(arr[1], cv2.COLOR_RGB2GRAY))
    big = cf.gray([1], 200)[0]
    assert np.array_equal(big, resize_short(full, 200))
    assert 1 not in base_calls
    with pytest.raises(IndexError):
        cf.gray([6], 128)


def test_gray_source_split_keeps_the_verdicts_of_the_sample_clips(samples):
    """Opt-in filters.gray_source=split on real clips: the same verdicts, scores close to the
    default's (bikes: 640x272 analysis frames), identical up to float summation order for a
    source already at or below the split's side (carphone 176x144)."""
    from pathlib import Path

    from mugv_data.config import load_config
    from mugv_data.per_source import SourceProcessor

    demo = Path(__file__).parents[1] / "configs" / "demo.yaml"
    base = ["filters.text.enabled=false"]
    ref = SourceProcessor(load_config(demo, overrides=base), encode=False)
    fast = SourceProcessor(
        load_config(demo, overrides=[*base, "filters.gray_source=split"]), encode=False
    )
    for name in ("bikes.mp4", "carphone_pristine.mp4"):
        a, b = ref(samples / name), fast(samples / name)
        assert [c.rejected_stage for c in a.clips] == [c.rejected_stage for c in b.clips]
        for ca, cb in zip(a.clips, b.clips, strict=True):
            if ca.rejected_stage == "split":
                continue
            if name.startswith("carphone"):
                # the same frames: equal up to float summation order (OpenCV threading)
                assert ca.scores.keys() == cb.scores.keys()
                for key, value in ca.scores.items():
                    assert cb.scores[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
            else:
                assert cb.scores["motion"] == pytest.approx(ca.scores["motion"], rel=0.03)
                assert cb.scores["static_diff"] == pytest.approx(ca.scores["static_diff"], rel=0.06)
                assert cb.scores != ca.scores  # the split's frames were used
