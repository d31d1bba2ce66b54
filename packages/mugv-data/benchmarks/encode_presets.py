"""CPU cost, size and fidelity of the kept-clip H.264 encode per x264 preset / crf / tune.

The frames are what the chain encodes: every frame of the sample clips at the clip size
(``clip.short_side`` of the config, 360 in the demo), as I420 planes from
:func:`mugv_data.mp4_writer.i420`, encoded by :func:`mugv_formats.video.encode_mp4` with one
thread. Per setting: process CPU seconds (median over repeats, settings interleaved), encoded
bytes, and the luma PSNR of the decoded clips against the planes that went in (mean over
frames). The first setting is the reference the others are compared with (bytes ratio, CPU
ratio, PSNR difference).

    uv run python packages/mugv-data/benchmarks/encode_presets.py [--input DIR] [--repeats 3] \
        [--setting NAME=preset[,crf=N][,tune=T]] [--json out.json] [--md out.md]
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
from mugv_data.config import load_config
from mugv_data.decode import DecordReader, target_size
from mugv_data.inputs import discover_inputs
from mugv_data.mp4_writer import i420
from mugv_data.probe import probe_video
from mugv_formats.video import encode_mp4

sys.path.insert(0, str(Path(__file__).parent))
from throughput import DEMO, _cpu_model, sample_dir

#: name -> (preset, crf, tune): the default, the faster presets at the default crf, and at a
#: crf that brings their size back to about the default's.
SETTINGS = {
    "veryfast crf20 (default)": ("veryfast", 20, None),
    "veryfast crf20 fastdecode": ("veryfast", 20, "fastdecode"),
    "superfast crf20": ("superfast", 20, None),
    "superfast crf22": ("superfast", 22, None),
    "superfast crf23": ("superfast", 23, None),
    "ultrafast crf20": ("ultrafast", 20, None),
    "ultrafast crf26": ("ultrafast", 26, None),
    "ultrafast crf28": ("ultrafast", 28, None),
}


def parse_setting(text: str) -> tuple[str, tuple[str, int, str | None]]:
    name, _, rest = text.partition("=")
    parts = rest.split(",")
    if not name or not parts[0]:
        raise ValueError(f"--setting {text!r}: expected NAME=preset[,crf=N][,tune=T]")
    crf, tune = 20, None
    for p in parts[1:]:
        k, _, v = p.partition("=")
        if k == "crf":
            crf = int(v)
        elif k == "tune":
            tune = v
        else:
            raise ValueError(f"--setting {text!r}: unknown key {k!r} (crf, tune)")
    return name, (parts[0], crf, tune)


def encode(planes: list[np.ndarray], fps: float, preset: str, crf: int, tune: str | None) -> bytes:
    if tune is None:
        return encode_mp4(
            iter(planes), fps, crf=crf, preset=preset, threads=1, frame_format="yuv420p"
        )
    # encode_mp4 has no tune argument: the same writer with one more libx264 option
    buf = io.BytesIO()
    h, w = planes[0].shape[0] // 3 * 2, planes[0].shape[1]
    with av.open(buf, mode="w", format="mp4") as c:
        from fractions import Fraction

        s = c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"crf": str(crf), "preset": preset, "threads": "1", "tune": tune}
        for n, p in enumerate(planes):
            vf = av.VideoFrame.from_ndarray(p, format="yuv420p")
            vf.pts = n
            c.mux(s.encode(vf))
        c.mux(s.encode())
    return buf.getvalue()


def luma_psnr(mp4: bytes, planes: list[np.ndarray]) -> float:
    out = []
    with av.open(io.BytesIO(mp4)) as c:
        for p, frame in zip(planes, c.decode(video=0), strict=True):
            h = p.shape[0] // 3 * 2
            y = frame.to_ndarray(format="yuv420p")[:h].astype(np.float64)
            mse = float(np.mean((y - p[:h]) ** 2))
            out.append(10 * np.log10(255.0**2 / max(mse, 1e-10)))
    return float(np.mean(out))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--input", default=str(sample_dir()))
    ap.add_argument("--config", default=str(DEMO))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--setting", action="append", default=None, metavar="NAME=preset,crf=N")
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    args = ap.parse_args()
    settings = dict(SETTINGS)
    if args.setting:
        try:
            settings = dict(parse_setting(s) for s in args.setting)
        except ValueError as e:
            ap.error(str(e))
    cv2.setNumThreads(1)
    load_start = os.getloadavg()
    cfg = load_config(args.config, overrides=["decode.threads=1"])
    clips = []
    for p in discover_inputs([args.input], cfg.input.extensions):
        info = probe_video(p)
        w, h = target_size(info.width, info.height, cfg.clip.short_side)
        r = DecordReader(info, cfg.clip.short_side, threads=1)
        assert (r.width, r.height) == (w, h)
        clips.append((info.fps, list(i420(r.iter_frames()))))
        r.close()
    frames = sum(len(c[1]) for c in clips)
    cpu: dict[str, list[float]] = {n: [] for n in settings}
    nbytes: dict[str, int] = {}
    for rep in range(args.repeats):
        order = list(settings.items()) if rep % 2 == 0 else list(settings.items())[::-1]
        for name, (preset, crf, tune) in order:
            c0 = time.process_time()
            size = sum(len(encode(planes, fps, preset, crf, tune)) for fps, planes in clips)
            cpu[name].append(time.process_time() - c0)
            nbytes[name] = size
    psnr = {
        name: statistics.mean(
            luma_psnr(encode(planes, fps, preset, crf, tune), planes) for fps, planes in clips
        )
        for name, (preset, crf, tune) in settings.items()
    }
    ref = next(iter(settings))
    rows = []
    for name, (preset, crf, tune) in settings.items():
        med = statistics.median(cpu[name])
        rows.append(
            {
                "setting": name,
                "preset": preset,
                "crf": crf,
                "tune": tune,
                "cpu_seconds": round(med, 4),
                "cpu_ms_per_frame": round(1000 * med / frames, 3),
                "cpu_vs_reference": round(med / statistics.median(cpu[ref]), 3),
                "bytes": nbytes[name],
                "bytes_vs_reference": round(nbytes[name] / nbytes[ref], 3),
                "luma_psnr_db": round(psnr[name], 2),
                "psnr_vs_reference_db": round(psnr[name] - psnr[ref], 2),
                "all_cpu_seconds": [round(x, 4) for x in cpu[name]],
            }
        )
    result = {
        "benchmark": "mugv-data kept-clip H.264 encode per x264 setting (1 thread)",
        "device": f"CPU: {_cpu_model()}, {os.cpu_count()} logical cores (shared machine)",
        "platform": platform.platform(),
        "date": datetime.date.today().isoformat(),
        "command": "uv run python packages/mugv-data/benchmarks/encode_presets.py "
        + " ".join(sys.argv[1:]),
        "statistic": "CPU seconds: median over repeats, settings interleaved",
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "frames": frames,
        "clip_short_side": cfg.clip.short_side,
        "repeats": args.repeats,
        "reference": ref,
        "results": rows,
    }
    print(f"{frames} frames ({len(clips)} clips at short side {cfg.clip.short_side})")
    print(markdown_table(result), end="")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(markdown_table(result))


def markdown_table(result: dict) -> str:
    lines = [
        "| setting | CPU s (median) | ms / frame | CPU vs ref | bytes | bytes vs ref "
        "| luma PSNR dB | PSNR vs ref |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["results"]:
        lines.append(
            f"| {r['setting']} | {r['cpu_seconds']:.3f} | {r['cpu_ms_per_frame']:.2f} "
            f"| {r['cpu_vs_reference']:.2f} | {r['bytes']} | {r['bytes_vs_reference']:.2f} "
            f"| {r['luma_psnr_db']:.2f} | {r['psnr_vs_reference_db']:+.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
