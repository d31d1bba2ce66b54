"""What each faster CPU setting changes on the sample clips (issue 24): may it be a default?

For every variant of ``throughput.py`` (``FAST_VARIANTS``: each opt-in lever alone and
together) the per-source chain runs over the same sources as the defaults (``configs/demo.yaml``
thresholds, ``decode.threads=1``, no encode) and the clips are compared with the defaults':

- ``verdict_changes``: clips whose rejecting stage differs;
- ``scores_missing``: scores the defaults record and the variant does not (short_circuit);
- ``max_abs`` / ``max_rel``: the largest change of each score over the clips;
- ``crossings``: a score that moves across its filter's threshold on any clip, i.e. a clip that
  would be kept or rejected differently by that filter alone (the first rejecting stage can
  hide it: a clip rejected for sharpness is not rejected again for shake);
- ``within_sample_tolerances``: every score within the tolerances the sample-clip tests hold
  an alternative decode path to (sharpness 2 %, brightness 2 levels, motion 5 %; every other
  score 1e-6 relative: no such test allows it to move) and no verdict change, no crossing, no
  missing score.

The rule (README "Faster CPU settings"): a setting that changes what is kept on the sample
clips, or moves a score outside those tolerances, stays opt-in.

    uv run python packages/mugv-data/benchmarks/fast_levers.py [--input DIR] \\
        [--json docs/benchmarks/data/fast_levers.json] [--md table.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mugv_data.config import CurateConfig, load_config
from mugv_data.inputs import discover_inputs
from mugv_data.per_source import SourceProcessor
from throughput import DEMO, FAST_VARIANTS, sample_dir

#: score -> (filter section, bound field): the thresholds a score is judged by
THRESHOLDS = {
    "sharpness": [("sharpness", "min"), ("sharpness", "max")],
    "motion": [("motion", "min"), ("motion", "max")],
    "static_diff": [("static", "min")],
    "brightness": [("brightness", "min"), ("brightness", "max")],
    "border_ratio": [("borders", "max")],
    "text_ratio": [("text", "max")],
    "shake": [("shake", "min"), ("shake", "max")],
    "speed_change": [("speed", "min"), ("speed", "max")],
    "diff_spike": [("speed", "max_diff_spike")],
}
#: score -> (kind, tolerance) held by the sample-clip tests for another decode path
#: (tests/test_decode_opencv_convert.py); every other score: 1e-6 relative
TOLERANCES = {"sharpness": ("rel", 0.02), "brightness": ("abs", 2.0), "motion": ("rel", 0.05)}


def bounds(cfg: CurateConfig, score: str) -> list[tuple[str, float]]:
    out = []
    for section, field in THRESHOLDS.get(score, []):
        v = getattr(getattr(cfg.filters, section), field)
        if v is not None:
            out.append((f"filters.{section}.{field}", float(v)))
    return out


def run(config: Path, sets: list[str], paths: list[Path]) -> dict[str, tuple]:
    cfg = load_config(config, overrides=["decode.threads=1", *sets])
    proc = SourceProcessor(cfg, encode=False)
    proc.setup()
    out = {}
    for p in paths:
        for c in proc(p).clips:
            out[c.key] = (c.rejected_stage, dict(c.scores))
    proc.teardown()
    return out


def compare(cfg: CurateConfig, base: dict, got: dict) -> dict:
    verdicts = sorted(k for k in base if base[k][0] != got.get(k, (None,))[0])
    missing: set[str] = set()
    max_abs: dict[str, float] = {}
    max_rel: dict[str, float] = {}
    crossings = []
    within = True
    for k, (_, sc) in sorted(base.items()):
        for name, v in sc.items():
            if name not in got[k][1]:
                missing.add(name)
                continue
            w = got[k][1][name]
            d = abs(w - v)
            max_abs[name] = max(max_abs.get(name, 0.0), d)
            max_rel[name] = max(max_rel.get(name, 0.0), d / max(abs(v), 1e-12))
            kind, tol = TOLERANCES.get(name, ("rel", 1e-6))
            if d > (tol if kind == "abs" else tol * max(abs(v), 1e-12)):
                within = False
            for key, b in bounds(cfg, name):
                lo = key.endswith(".min")
                crossed = ((v < b) != (w < b)) if lo else ((v > b) != (w > b))
                if crossed:
                    crossings.append(f"{k} {name} {v:.4g} -> {w:.4g} across {key}={b:g}")
    return {
        "same_clips": sorted(base) == sorted(got),
        "verdict_changes": verdicts,
        "scores_missing": sorted(missing),
        "crossings": crossings,
        "max_abs": {n: round(d, 6) for n, d in sorted(max_abs.items()) if d > 1e-9},
        "max_rel": {n: round(d, 6) for n, d in sorted(max_rel.items()) if d > 1e-9},
        "within_sample_tolerances": within and not verdicts and not missing and not crossings,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", default=str(sample_dir()), help="folder of videos")
    ap.add_argument("--config", type=Path, default=DEMO)
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    args = ap.parse_args()
    cfg = load_config(args.config, overrides=["decode.threads=1"])
    paths = discover_inputs([args.input], cfg.input.extensions)
    base = run(args.config, [], paths)
    rows = []
    for name, sets in FAST_VARIANTS.items():
        r = {"variant": name, "overrides": sets, **compare(cfg, base, run(args.config, sets, paths))}
        rows.append(r)
        print(f"{name:24s} within={r['within_sample_tolerances']!s:5s} "
              f"verdicts={len(r['verdict_changes'])} crossings={len(r['crossings'])} "
              f"missing={len(r['scores_missing'])} max_rel={r['max_rel']}", flush=True)  # fmt: skip
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "device": platform.processor() or platform.machine(),
        "sources": [str(Path(p).name) for p in paths],
        "clips": len(base),
        "kept_by_default": sum(1 for v in base.values() if v[0] is None),
        "tolerances": {**{k: list(v) for k, v in TOLERANCES.items()}, "other": ["rel", 1e-6]},
        "rows": rows,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.md:
        lines = [
            "| variant | verdict changes | threshold crossings | scores missing | largest score changes (relative) | may be a default |",
            "|---|---|---|---|---|---|",
        ]  # fmt: skip
        for r in rows:
            top = sorted(r["max_rel"].items(), key=lambda kv: -kv[1])[:3]
            lines.append(
                f"| {r['variant']} | {len(r['verdict_changes'])} | "
                f"{'; '.join(r['crossings']) or 0} | {', '.join(r['scores_missing']) or '-'} | "
                f"{', '.join(f'{n} {v:.1%}' for n, v in top) or 'none'} | "
                f"{'yes' if r['within_sample_tolerances'] else 'no'} |"
            )
        Path(args.md).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
