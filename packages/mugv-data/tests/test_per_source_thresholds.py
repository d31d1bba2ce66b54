"""Per-source filter overrides (keyed by a source glob) and the report's sharpness rule
(every sampled frame in range) beside our mean rule."""

from __future__ import annotations

import html
from pathlib import Path

import cv2
import numpy as np
import pytest
from mugv_data.config import SharpnessConfig, load_config
from mugv_data.per_source import SourceProcessor
from mugv_data.stages.base import Clip, ClipFrames
from mugv_data.stages.filters import SharpnessFilter
from mugv_data.synth import scene, write_video
from mugv_formats.config_loading import ConfigError
from scipy import ndimage


def laplacian_var64(g: np.ndarray) -> float:
    """float64 reference: 4-neighbour Laplacian, mirrored borders (OpenCV's reflect-101)."""
    k = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float64)
    return float(ndimage.convolve(g.astype(np.float64), k, mode="mirror").var())


def gray_clip(grays) -> Clip:
    arr = np.stack([np.repeat(g[..., None], 3, axis=2) for g in grays])
    c = Clip("k", "s", 0, 0, len(arr), 0.0, 1.0, 25.0)
    c.frames = ClipFrames(len(arr), 25.0, lambda idx: arr[list(idx)])
    return c


def test_sharpness_every_frame_rule_against_the_mean_rule():
    rng = np.random.default_rng(0)
    sharp = cv2.GaussianBlur(rng.integers(0, 256, (64, 96), dtype=np.uint8), (0, 0), 1.2)
    blurry = cv2.GaussianBlur(sharp, (0, 0), 3.0)
    frames = [sharp, blurry, sharp]  # evenly(3) of 3 frames takes all three
    v = [laplacian_var64(g) for g in frames]
    lo = (np.mean(v) + v[1]) / 2  # between the blurry frame and the mean
    mean_rule = gray_clip(frames)
    SharpnessFilter(SharpnessConfig(min=lo, max=None)).process([mean_rule])
    assert mean_rule.scores["sharpness"] == pytest.approx(np.mean(v), rel=1e-9)
    assert mean_rule.scores["sharpness_lo"] == pytest.approx(v[1], rel=1e-9)
    assert mean_rule.scores["sharpness_hi"] == pytest.approx(v[0], rel=1e-9)
    assert mean_rule.kept
    every = gray_clip(frames)
    SharpnessFilter(SharpnessConfig(min=lo, max=None, rule="every")).process([every])
    assert every.rejected_stage == "sharpness"
    assert every.reason == f"a frame's sharpness {v[1]:.4g} < min {lo:g}"
    hi = (np.mean(v) + v[0]) / 2  # too sharp a frame, mean in range
    top = gray_clip(frames)
    SharpnessFilter(SharpnessConfig(min=None, max=hi, rule="every")).process([top])
    assert top.reason == f"a frame's sharpness {v[0]:.4g} > max {hi:g}"


def test_per_source_overrides_apply_to_matching_sources_only(tmp_path):
    frames = scene(40, 144, 192, speed=2.0, seed=3)
    (tmp_path / "phone").mkdir()
    (tmp_path / "cam").mkdir()
    phone = write_video(tmp_path / "phone" / "a.mp4", frames)
    cam = write_video(tmp_path / "cam" / "a.mp4", frames)
    base = [
        "split.min_clip_s=1.0",
        "filters.text.enabled=false",
        "filters.sharpness.min=1000000",  # nothing passes by default
        "filters.sharpness.max=null",
    ]
    over = (
        'filters.per_source={"*/phone/*": {"sharpness": {"min": 1}, "static": {"enabled": false}}}'
    )
    cfg = load_config(None, overrides=[*base, over])
    proc = SourceProcessor(cfg, encode=False)
    r_phone, r_cam = proc(phone), proc(cam)
    assert [c.rejected_stage for c in r_cam.clips] == ["sharpness"]
    assert [c.rejected_stage for c in r_phone.clips] == [None]
    # the override disabled a stage for the phone source: no static score there
    assert "static_diff" in r_cam.clips[0].scores and "static_diff" not in r_phone.clips[0].scores
    # the same scores otherwise (same frames): only the verdicts differ
    assert r_phone.clips[0].scores["sharpness"] == r_cam.clips[0].scores["sharpness"]
    # the overridden stage is a copy sharing the run's stage state, built once
    assert proc.stages_for(str(phone.resolve())) is proc.stages_for(str(phone.resolve()))
    assert proc.stages_for(str(cam.resolve())) is proc.stages


def test_per_source_override_errors_name_the_glob():
    with pytest.raises(ConfigError, match=r"per_source\['\*/p/\*'\].*min=3000.0 > max=2000.0"):
        load_config(None, overrides=['filters.per_source={"*/p/*": {"sharpness": {"min": 3000}}}'])
    with pytest.raises(ConfigError, match=r"aesthetic.clip_path cannot differ per source"):
        load_config(
            None, overrides=['filters.per_source={"*/p/*": {"aesthetic": {"clip_path": "x"}}}']
        )
    with pytest.raises(ConfigError, match=r"per_source\['x'\].*sharpnes"):
        load_config(None, overrides=['filters.per_source={"x": {"sharpnes": {"min": 1}}}'])


def cards(html_text: str) -> list[str]:
    return html_text.split("<div class='card'>")[1:]


def test_report_names_the_override_that_rejected_a_clip(tmp_path):
    """A clip rejected only under a per-source override: the report lists the glob and its
    threshold, draws that threshold (orange, labelled) on the score's histogram beside the
    run's, and the clip's card gives its reason and the glob; the clip of the other source,
    same settings but the override, is kept. ``mugv-data report`` rebuilds the same page."""
    from mugv_data.curate import curate, read_rejects, rebuild_report

    frames = scene(40, 144, 192, speed=2.0, seed=3)
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 1.5) for f in frames])
    for d in ("phone", "cam"):
        (tmp_path / "in" / d).mkdir(parents=True)
    phone = write_video(tmp_path / "in" / "phone" / "a.mp4", blurred)
    cam = write_video(tmp_path / "in" / "cam" / "a.mp4", frames)
    base = [
        "engine.kind=sequential",
        "split.min_clip_s=1.0",
        "filters.text.enabled=false",
        "filters.sharpness.max=null",
    ]
    # the two clips' sharpness, scored without any threshold on it
    proc = SourceProcessor(load_config(None, overrides=[*base, "filters.sharpness.min=null"]))
    (c_phone,), (c_cam,) = proc(phone).clips, proc(cam).clips
    assert c_phone.kept and c_cam.kept
    s_phone, s_cam = c_phone.scores["sharpness"], c_cam.scores["sharpness"]
    assert s_phone < 0.8 * s_cam, (s_phone, s_cam)  # the blur lowered it
    run_min = s_phone / 2  # both pass the run's threshold
    over_min = (s_phone + s_cam) / 2  # only the phone clip fails the override's
    cfg = load_config(
        None,
        inputs=[str(tmp_path / "in")],
        output=str(tmp_path / "out"),
        overrides=[
            *base,
            f"filters.sharpness.min={run_min!r}",
            f'filters.per_source={{"*/phone/*": {{"sharpness": {{"min": {over_min!r}}}}}}}',
        ],
    )
    curate(cfg, progress=False)
    out = tmp_path / "out"
    (rej,) = [r for r in read_rejects(out) if r["key"] == c_phone.key]
    reason = f"sharpness {s_phone:.4g} < min {over_min:g}"
    assert (rej["stage"], rej["reason"]) == ("sharpness", reason)
    assert not [r for r in read_rejects(out) if r["key"] == c_cam.key]
    page = (out / "report.html").read_text()
    # the overrides table: the glob, its threshold, one source, one clip judged, rejected
    assert (
        f"<tr><td>#1</td><td><code>*/phone/*</code></td><td>sharpness.min = {over_min!r}</td>"
        "<td>1</td><td>1</td><td>1</td></tr>"
    ) in page
    # the sharpness histogram spans [s_phone, s_cam]: the override's min, their midpoint, is
    # drawn in the middle of the 320-px plot (24-px margins), the run's min is off the scale
    fig = next(f for f in page.split("<figure>")[1:] if "sharpness (n=2)" in f)
    assert "<line x1='160.0' x2='160.0' y1='18' y2='116' stroke='#e70'" in fig
    assert ">#1</text>" in fig and "stroke='#00f'" not in fig
    assert f"thresholds: run min {run_min:g}; #1 min {over_min:g}</figcaption>" in fig
    # the cards: the rejected clip's reason and the glob that judged it; the kept one neither
    (card,) = [c for c in cards(page) if c_phone.key in c]
    assert f"<b>sharpness</b>: {html.escape(reason)}" in card
    assert "thresholds of per_source #1 &#x27;*/phone/*&#x27;" in card
    (kept,) = [c for c in cards(page) if c_cam.key in c]
    assert "per_source" not in kept and "<b>" not in kept
    (out / "report.html").unlink()
    assert rebuild_report(out).read_text() == page


def test_report_labels_a_source_matched_by_two_globs_with_both(tmp_path):
    """Overlapping globs apply in config order: the report draws their merged thresholds
    (#1's min, #2's max) under the label #1+#2 and counts the clips for each glob."""
    from mugv_data.report import ReportBuilder

    class NoThumbs:
        def thumb_path(self, key):
            return Path("/nonexistent") / f"{key}.jpg"

    cfg = load_config(
        None,
        overrides=[
            "filters.motion.min=0.1",
            "filters.motion.max=10",
            'filters.per_source={"/v/a*": {"motion": {"min": 2, "max": 5}}, '
            '"*/ab*": {"motion": {"max": 3}}}',
        ],
    )
    rb = ReportBuilder(tmp_path, NoThumbs(), cfg)
    for src, key, m, stage in [
        ("/v/ab.mp4", "k1", 1.0, "motion"),  # #1+#2: rejected by min 2
        ("/v/ac.mp4", "k2", 4.0, None),  # #1 only: 4 in [2, 5]
        ("/v/b.mp4", "k3", 9.0, None),  # the run's [0.1, 10]
    ]:
        rb.add_clip(src, key, key, (0.0, 1.0), {"motion": m}, stage, "r" if stage else None)
    assert rb._glob_counts == {"/v/a*": [0, 2, 1], "*/ab*": [0, 1, 1]}
    (fig,) = rb._histograms().split("<figure>")[1:]
    assert "thresholds: run min 0.1, max 10; #1+#2 min 2, max 3; #1 min 2, max 5<" in fig
    # lo=1, hi=9 over 272 px: min 2 at 24+34=58, max 3 at 92, max 5 at 160
    for x, label in [(58.0, "#1+#2"), (92.0, "#1+#2"), (58.0, "#1"), (160.0, "#1")]:
        assert f"<line x1='{x}' x2='{x}' y1='18' y2='116' stroke='#e70'" in fig
        assert f"<text x='{x + 2}' y='26' font-size='9' fill='#e70'>{label}</text>" in fig
    card = next(c for c in cards("".join(rb.rej_cards)) if "k1" in c)
    assert "thresholds of per_source #1+#2 &#x27;/v/a*&#x27;, &#x27;*/ab*&#x27;" in card
