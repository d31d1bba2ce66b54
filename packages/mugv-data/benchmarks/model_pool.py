"""Model pool vs per-worker models: clips per hour through decode + embed + aesthetic.

Both rows run the curation's own per-source workers (``SourceProcessor``: probe, decode, shot
split, then the aesthetic stage: CLIP image embeddings + LAION head; no mp4 encode) on the
process engine over the same synthetic H.264 sources, in one run:

- ``per-worker``: every worker loads its own models. On CUDA the engine runs ``1 / 0.5 = 2``
  workers per GPU (the aesthetic stage declares 0.5 GPU), so one GPU box decodes on 2 cores.
- ``pool``: ``--servers`` model servers hold the models (``engine.model_pool``); ``--workers``
  CPU workers decode, split and send only the frames the stage reads.

The models have random weights of the real shapes (CLIP ViT-L/14 at 224, ``--tiny``: 2 layers
of width 32): the work per clip is the real model's, the scores mean nothing. Prints a table
and writes JSON (``--json``) and markdown (``--md``).

    uv run python packages/mugv-data/benchmarks/model_pool.py --tiny --device cpu
    python packages/mugv-data/benchmarks/model_pool.py --device cuda --json $OUT/model_pool.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from mugv_data.config import load_config
from mugv_data.curate import source_spec
from mugv_data.engines import ProcessPoolEngine, WorkerSpec, available_cpus
from mugv_data.per_source import build_source_worker, worker_resources
from mugv_data.random_models import write_aesthetic_models


def make_source(path: str, shots: int, shot_frames: int, h: int, w: int, seed: int) -> str:
    from mugv_data.synth import scene, write_video

    frames = []
    for k in range(shots):  # distinct textures: one cut between shots
        frames += scene(shot_frames, h=h, w=w, speed=2.0, seed=seed * 100 + k)
    write_video(Path(path), frames)
    return path


def make_sources(folder: Path, n: int, distinct: int, shots: int, shot_frames: int, h: int, w: int):
    """``n`` source paths: ``distinct`` encoded videos, the rest hard links to them (their
    content repeats; each is decoded and scored as a source of its own)."""
    folder.mkdir(parents=True, exist_ok=True)
    distinct = min(distinct, n)
    with ProcessPoolExecutor(min(distinct, available_cpus())) as pool:
        made = list(
            pool.map(
                make_source,
                [str(folder / f"src{i:03d}.mp4") for i in range(distinct)],
                [shots] * distinct,
                [shot_frames] * distinct,
                [h] * distinct,
                [w] * distinct,
                range(distinct),
            )
        )
    paths = list(made)
    for i in range(distinct, n):
        p = folder / f"src{i:03d}.mp4"
        if not p.exists():
            os.link(made[i % distinct], p)
        paths.append(str(p))
    return paths


def run_mode(mode: str, config, sources: list[str]) -> dict:
    """One row: the sources through the process engine, with or without the model pool."""
    t0 = time.perf_counter()
    engine = ProcessPoolEngine(config)
    try:
        if mode == "pool":
            spec = source_spec(config, engine)  # starts the servers (models loaded)
            servers = len(engine.pools[0].pids)
        else:
            spec = WorkerSpec("sources", build_source_worker, worker_resources(config))
            servers = 0
        spec = dataclasses.replace(spec, build=functools.partial(spec.build, encode=False))
        t_pool = time.perf_counter() - t0
        first = last = None
        clips = clips_after_first = 0
        timings: dict[str, float] = {}
        for _, res in engine.map(spec, sources):
            if res.reject_stage is not None:
                raise RuntimeError(f"{res.source}: {res.reject_stage} {res.reject_detail}")
            n = sum(1 for c in res.clips if "aesthetic" in c.scores)
            now = time.perf_counter()
            if first is None:
                first = now
            else:
                clips_after_first += n
            last = now
            clips += n
            for k, v in res.timings.items():
                timings[k] = timings.get(k, 0.0) + v
    finally:
        engine.close()
    wall = last - t0
    steady = last - first
    workers = config.engine.workers
    if mode == "per-worker":
        workers = min(workers, worker_count(config))
    return {
        "mode": mode,
        "workers": workers,
        "servers": servers,
        "model_copies": servers if mode == "pool" else workers,
        "sources": len(sources),
        "clips": clips,
        "servers_ready_s": round(t_pool, 2) if mode == "pool" else None,
        "first_source_s": round(first - t0, 2),
        "wall_s": round(wall, 2),
        "clips_per_hour": round(clips / wall * 3600),
        "clips_per_hour_steady": round(clips_after_first / steady * 3600) if steady > 0 else None,
        "worker_seconds": {k: round(v, 2) for k, v in sorted(timings.items())},
    }


def build_echo(config):
    """A model server that only counts the clips it gets (the transport's own cost)."""
    return lambda request: len(request[1])


def transport_row(config, w: int, h: int, num_frames: int, requests: int = 24) -> dict:
    """Requests of ``batch_clips`` packed clips (``num_frames`` frames at the analysis size)
    to one echo server, ``max_in_flight`` in flight: the clips/hour the IPC alone allows."""
    import numpy as np
    from mugv_data.decode import target_size
    from mugv_data.model_servers import ModelServers, ServerConnections

    mp = config.engine.model_pool
    aw, ah = target_size(w, h, config.decode.analysis_short_side)
    frames = np.random.default_rng(0).integers(0, 256, (num_frames, ah, aw, 3), dtype=np.uint8)
    clip = {"key": "k", "indices": list(range(num_frames)), "frames": frames, "scores": {}}
    # each clip its own frames (pickle sends a shared array once)
    request = ("source", [dict(clip, frames=frames.copy()) for _ in range(mp.batch_clips)])
    servers = ModelServers("echo", build_echo, config, [None])
    try:
        conns = ServerConnections(servers.addresses)
        conns.result(conns.submit(0, request))  # connected, warm
        t = time.perf_counter()
        out = []
        for _ in range(requests):
            out.append(conns.submit(0, request))
            if len(out) >= mp.max_in_flight:
                conns.result(out.pop(0))
        for handle in out:
            conns.result(handle)
        dt = time.perf_counter() - t
    finally:
        servers.stop()
    return {
        "mode": "transport only (echo server)",
        "request_mb": round(frames.nbytes * mp.batch_clips / 1e6, 1),
        "seconds_per_request": round(dt / requests, 4),
        "clips_per_hour": round(requests * mp.batch_clips / dt * 3600),
    }


def worker_count(config) -> int:
    """Workers the process engine runs for per-worker models (GPU slots cap it on CUDA)."""
    from mugv_data.engines import gpu_slots, visible_gpus

    r = worker_resources(config)
    n = config.engine.workers
    if r.gpus > 0:
        n = len(gpu_slots(visible_gpus(), r.gpus, n))
    return n


def markdown(r: dict) -> str:
    lines = [] if not r["rows"] else [
        f"Model pool vs per-worker models, {r['device_name']} ({r['date']}), "
        f"{r['sources']} sources of {r['size']} ({r['shots']} shots of {r['shot_frames']} "
        f"frames), aesthetic {r['clip_size']}, `{r['command']}`",
        "",
        "| mode | workers | model servers | model copies | clips | first source s | wall s | "
        "clips/hour | clips/hour after the first source |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for x in r["rows"]:
        lines.append(
            f"| {x['mode']} | {x['workers']} | {x['servers']} | {x['model_copies']} | "
            f"{x['clips']} | {x['first_source_s']} | {x['wall_s']} | {x['clips_per_hour']} | "
            f"{x['clips_per_hour_steady']} |"
        )
    t = r.get("transport")
    if t:
        lines += [
            "",
            f"Transport alone, {r['device_name']} ({r['date']}), one echo server, requests "
            f"of {t['request_mb']} MB ({r['size']} sources at the analysis size): "
            f"{t['seconds_per_request']} s a request, {t['clips_per_hour']} clips/hour.",
        ]
    return "\n".join(lines).strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="the aesthetic stage's device")
    ap.add_argument("--tiny", action="store_true", help="tiny sources and model (CPU check)")
    ap.add_argument("--sources", type=int, default=96)
    ap.add_argument("--distinct", type=int, default=8, help="distinct encoded sources")
    ap.add_argument("--shots", type=int, default=4, help="shots (clips) per source")
    ap.add_argument("--shot-frames", type=int, default=75, help="frames per shot (25 fps)")
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--workers", type=int, default=0, help="pool CPU workers (0: CPUs - servers)")
    ap.add_argument("--servers", type=int, default=1)
    ap.add_argument("--batch-clips", type=int, default=16)
    ap.add_argument("--max-in-flight", type=int, default=2)
    ap.add_argument("--num-frames", type=int, default=4, help="frames the aesthetic stage scores")
    ap.add_argument(
        "--modes",
        default="per-worker,pool,transport",
        help="rows: per-worker, pool, transport (one echo server: the IPC alone)",
    )
    ap.add_argument("--work", default=None, help="folder for sources and models (default: temp)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    args = ap.parse_args()
    unknown = set(args.modes.split(",")) - {"per-worker", "pool", "transport", ""}
    if unknown:
        ap.error(f"--modes: unknown {sorted(unknown)} (per-worker, pool, transport)")
    clip_size = "l14"
    if args.tiny:
        args.sources, args.distinct, args.shots, args.shot_frames = 4, 2, 2, 30
        args.height, args.width = 96, 128
        clip_size = "tiny"
    cpus = available_cpus()
    workers = args.workers or max(1, cpus - args.servers)
    with tempfile.TemporaryDirectory(prefix="model_pool_bench_") as tmp:
        work = Path(args.work or tmp)
        modes = [m for m in args.modes.split(",") if m]
        rows_wanted = [m for m in modes if m != "transport"]
        t = time.perf_counter()
        sources, clip, head = [], work / "models" / "clip", work / "models" / "head.pth"
        if rows_wanted:
            sources = make_sources(
                work / "sources", args.sources, args.distinct, args.shots, args.shot_frames,
                args.height, args.width,
            )  # fmt: skip
            clip, head = write_aesthetic_models(work / "models", clip_size)
            print(f"sources and models ready in {time.perf_counter() - t:.1f} s", flush=True)
        sets = [
            "engine.kind=process",
            f"engine.workers={workers}",
            f"engine.model_pool.actors={args.servers}",
            f"engine.model_pool.gpus={1.0 / args.servers if args.device != 'cpu' else 1.0}",
            f"engine.model_pool.batch_clips={args.batch_clips}",
            f"engine.model_pool.max_in_flight={args.max_in_flight}",
            "split.min_clip_s=0.5",
            f"split.max_clip_s={max(1.0, args.shot_frames / 25)}",
            "filters.text.enabled=false",
            "filters.aesthetic.enabled=true",
            f"filters.aesthetic.clip_path={clip}",
            f"filters.aesthetic.head_path={head}",
            f"filters.aesthetic.device={args.device}",
            f"filters.aesthetic.num_frames={args.num_frames}",
            "filters.aesthetic.min=-1e9",  # random weights: keep every clip
        ]
        for name in ("brightness", "borders", "static", "sharpness", "motion", "shake", "speed"):
            sets.append(f"filters.{name}.enabled=false")  # decode + embed + aesthetic only
        config = load_config(None, overrides=sets)
        rows = []
        for mode in rows_wanted:
            row = run_mode(mode, config, sources)
            print(json.dumps(row), flush=True)
            rows.append(row)
        transport = None
        if "transport" in modes:
            transport = transport_row(config, args.width, args.height, args.num_frames)
            print(json.dumps(transport), flush=True)
    import torch  # only now: the sources were made by forked processes, CUDA not yet started

    device_name = (
        torch.cuda.get_device_name(0)
        if args.device.startswith("cuda") and torch.cuda.is_available()
        else f"CPU ({platform.processor() or platform.machine()}, {cpus} cores)"
    )
    result = {
        "benchmark": "model_pool",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": args.device,
        "device_name": device_name,
        "cpus": cpus,
        "load_avg": os.getloadavg(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "sources": args.sources,
        "size": f"{args.width}x{args.height}",
        "shots": args.shots,
        "shot_frames": args.shot_frames,
        "clip_size": clip_size,
        "rows": rows,
        "transport": transport,
    }
    md = markdown(result)
    print(md)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.md:
        Path(args.md).write_text(md + "\n")


if __name__ == "__main__":
    main()
