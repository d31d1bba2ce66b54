"""Calibrating the step cache: its threshold chosen from a measured speed-vs-deviation curve.

For a few prompts, one exact generation (threshold 0) and one per candidate threshold from
the same noise give, per threshold: the steps the cache served, the DiT time against the
exact run, and the deviation of the final latent (relative L2 and max abs against the exact
latent). The chosen threshold is the largest whose worst deviation over the prompts stays
within ``max_rel_l2`` (0 — the cache off — when none does).

The curve and the choice are written as JSON (``mugv-infer calibrate-cache``);
``runtime.step_cache_calibration: FILE`` makes ``generate`` use the chosen threshold.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

CALIBRATION_KIND = "mugv-infer.step-cache-calibration"
DEFAULT_THRESHOLDS = (0.03, 0.05, 0.1, 0.15, 0.2, 0.3)
DEFAULT_MAX_REL_L2 = 0.05


@dataclass
class CurvePoint:
    threshold: float
    skipped_steps: list[int]
    """Per prompt: steps served by the cache."""
    rel_l2: list[float]
    """Per prompt: ||latent - exact|| / ||exact||."""
    max_abs: list[float]
    dit_speedup: float
    """Exact DiT seconds over this threshold's, summed over the prompts."""

    @property
    def worst_rel_l2(self) -> float:
        return max(self.rel_l2)


@dataclass
class Calibration:
    steps: int
    prompts: int
    max_rel_l2: float
    threshold: float
    """The chosen threshold (0: the cache off)."""
    exact_seconds: float
    curve: list[CurvePoint] = field(default_factory=list)

    def to_json(self) -> dict:
        d = asdict(self)
        d["kind"] = CALIBRATION_KIND
        for point, raw in zip(self.curve, d["curve"]):
            raw["worst_rel_l2"] = point.worst_rel_l2
        return d


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def choose_threshold(curve: Sequence[CurvePoint], max_rel_l2: float) -> float:
    """The largest threshold whose worst deviation is within ``max_rel_l2`` and whose
    smaller thresholds all are too (a curve that jumps back under the bound after exceeding
    it is not trusted past the jump); 0 when the first one fails."""
    chosen = 0.0
    for point in sorted(curve, key=lambda p: p.threshold):
        if not point.worst_rel_l2 <= max_rel_l2:
            break
        chosen = point.threshold
    return chosen


def calibrate(
    generate: Callable[[int, float], tuple[torch.Tensor, int]],
    prompts: int,
    steps: int,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    max_rel_l2: float = DEFAULT_MAX_REL_L2,
    sync: Callable[[], None] = lambda: None,
    log: Callable[[str], None] = lambda _msg: None,
    on_point: Callable[[float, CurvePoint], None] = lambda _exact_s, _point: None,
) -> Calibration:
    """``generate(prompt_index, threshold) -> (final latents, skipped steps)``, the same
    noise for every threshold of a prompt; timed here (``sync`` waits for the device).
    ``on_point(exact_seconds, point)`` is called as each threshold's point is measured (a
    caller keeps a partial curve when a long calibration is cut short)."""
    if prompts < 1:
        raise ValueError(f"calibration needs at least one prompt, got {prompts}")
    if not thresholds or min(thresholds) <= 0:
        raise ValueError(f"calibration thresholds must be > 0, got {list(thresholds)}")
    if max_rel_l2 <= 0:
        raise ValueError(f"max_rel_l2 must be > 0, got {max_rel_l2}")

    def timed(i: int, thr: float):
        sync()
        t0 = time.perf_counter()
        latents, skipped = generate(i, thr)
        sync()
        return latents.detach().float().cpu(), skipped, time.perf_counter() - t0

    exact, exact_s = [], 0.0
    for i in range(prompts):
        lat, _, sec = timed(i, 0.0)
        exact.append(lat)
        exact_s += sec
    log(f"exact: {exact_s:.2f} s for {prompts} prompt(s) x {steps} steps")
    curve = []
    for thr in sorted(thresholds):
        skipped, rel, mx, sec_sum = [], [], [], 0.0
        for i in range(prompts):
            lat, sk, sec = timed(i, thr)
            skipped.append(sk)
            rel.append(relative_l2(lat, exact[i]))
            mx.append(float((lat - exact[i]).abs().max()))
            sec_sum += sec
        point = CurvePoint(thr, skipped, rel, mx, exact_s / max(sec_sum, 1e-9))
        curve.append(point)
        on_point(exact_s, point)
        log(
            f"threshold {thr:g}: skipped {skipped} of {steps}, DiT x{point.dit_speedup:.2f}, "
            f"rel L2 worst {point.worst_rel_l2:.3g}"
        )
    return Calibration(
        steps, prompts, max_rel_l2, choose_threshold(curve, max_rel_l2), exact_s, curve
    )


def write_calibration(calibration: Calibration, path: Path) -> Path:
    from mugv_formats.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(calibration.to_json(), indent=1))
    return path


def read_threshold(path: Path) -> float:
    """The chosen threshold of a calibration file (ValueError naming the file otherwise)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"step cache calibration {path}: cannot read ({e})") from None
    if not isinstance(data, dict) or data.get("kind") != CALIBRATION_KIND:
        raise ValueError(f"step cache calibration {path}: not a {CALIBRATION_KIND} file")
    thr = data.get("threshold")
    if not isinstance(thr, int | float) or not thr >= 0 or thr != thr or thr == float("inf"):
        raise ValueError(f"step cache calibration {path}: threshold {thr!r} is not a number >= 0")
    return float(thr)


def step_cache_threshold(runtime) -> float:
    """The threshold a run uses: the calibration file's choice when
    ``runtime.step_cache_calibration`` is set, else ``runtime.step_cache_threshold``."""
    if runtime.step_cache_calibration is not None:
        return read_threshold(runtime.step_cache_calibration)
    return runtime.step_cache_threshold
