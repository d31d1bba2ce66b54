"""Driver memory of the streaming curation: peak RSS of the driver process vs number of clips.

Synthetic inputs: tiny (48x64) panning scenes at 8 fps, each ``--seconds`` long with its own
seed; the split cuts every source into 1 s clips (``split.max_clip_s=1``), so a run of N clips
has N / seconds sources. Every clip goes through the whole chain: per-clip filters (all but
text; ranges widened so clips are kept and still scored), H.264 encoding, the clip index,
exact dedup on a worker, sidecar captions and tags as units on workers, balance weights,
shards, rejects and the report.

Each size runs in a fresh driver process (``--engine process``, ``--workers`` workers); the
driver's own peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``, the workers not included) is the
number. The issue's goal: peak RSS of the 20,000-clip run <= 1.2x the 2,000-clip run's.

    uv run python packages/mugv-data/benchmarks/driver_memory.py --clips 2000 20000 \
        --json docs/benchmarks/data/driver_memory.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

OVERRIDES = [
    "filters.text.enabled=false",
    "filters.sharpness.min=0",
    "filters.sharpness.max=1000000",
    "filters.motion.min=0",
    "filters.motion.max=1000",
    "filters.static.min=0",
    "filters.static.max_frozen_ratio=1",
    "split.min_clip_s=0.5",
    "split.max_clip_s=1.0",
    "split.trim_frames=0",
    "dedup.threshold=0.999",
    "captions.source=sidecar",
    "output.report_thumbnails=48",
    "output.clips_per_shard=256",
]


def make_inputs(folder: Path, sources: int, seconds: int) -> None:
    from mugv_data.synth import scene, write_video

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(sources):
        p = folder / f"s{i:06d}.mp4"
        if not p.exists():
            write_video(p, scene(8 * seconds, h=48, w=64, speed=1.0, seed=i), fps=8.0)
            (folder / f"s{i:06d}.txt").write_text(f"clip {i}: a person walks a dog by a car")


def one_run(inputs: Path, out: Path, workers: int) -> dict:
    """Run in this process (the measured driver) and report its own peak RSS."""
    from mugv_data.config import load_config
    from mugv_data.curate import curate

    over = [*OVERRIDES, "engine.kind=process", f"engine.workers={workers}"]
    cfg = load_config(None, inputs=[str(inputs)], output=str(out), overrides=over)
    t = time.perf_counter()
    s = curate(cfg, progress=False, overwrite=True)
    return dict(
        clips_seen=s.clips_seen,
        clips_kept=s.clips_kept,
        sources=s.sources,
        rejects_by_stage=s.rejects_by_stage,
        seconds=round(time.perf_counter() - t, 1),
        driver_peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--seconds", type=int, default=20, help="seconds (= clips) per source")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", default="/tmp/mugv-driver-memory", help="inputs and outputs")
    ap.add_argument("--json", default=None)
    ap.add_argument("--one", nargs=2, metavar=("INPUTS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_run(Path(args.one[0]), Path(args.one[1]), args.workers)))
        return
    work = Path(args.work)
    rows = []
    for n in args.clips:
        sources = -(-n // args.seconds)
        inputs = work / f"in-{sources}x{args.seconds}s"
        make_inputs(inputs, sources, args.seconds)
        out = work / f"out-{n}"
        cmd = [sys.executable, __file__, "--one", str(inputs), str(out)]
        cmd += ["--workers", str(args.workers)]
        p = subprocess.run(cmd, check=True, capture_output=True, text=True)
        row = dict(clips=n, **json.loads(p.stdout.strip().splitlines()[-1]))
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]["driver_peak_rss_mb"]
    print("\n| clips (candidates) | sources | kept | seconds | driver peak RSS MB | vs first |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['clips_seen']} | {r['sources']} | {r['clips_kept']} | {r['seconds']} | "
            f"{r['driver_peak_rss_mb']} | {r['driver_peak_rss_mb'] / base:.3f} |"
        )
    if args.json:
        result = dict(
            date=datetime.date.today().isoformat(),
            device=f"CPU: {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} logical cores, load average {os.getloadavg()[0]:.1f} at the end",
            command="uv run python packages/mugv-data/benchmarks/driver_memory.py "
            + " ".join(sys.argv[1:]),
            overrides=OVERRIDES,
            workers=args.workers,
            runs=rows,
            ratio_last_to_first=round(rows[-1]["driver_peak_rss_mb"] / base, 4),
        )
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
