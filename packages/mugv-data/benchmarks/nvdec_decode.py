"""GPU decode on one GPU: NVDEC (torchcodec) decode fps against CPU decoders (PyAV, decord,
torchcodec on CPU) of the same 720p H.264 clip, in one run; and clips per hour through
decode + CLIP embedding + aesthetic head (CPU decode + CPU preprocessing, the pipeline's path
today, against NVDEC decode + GPU preprocessing).

The clip is synthetic (a panned, detailed still, libx264, yuv420p, 30 fps); the CLIP model is
ViT-L/14-shaped with RANDOM weights (speed does not depend on weight values) plus the LAION
MLP head, bf16. Decode fps = all frames of the clip decoded to RGB at full size, best of
``--repeats``; GPU rows keep the frames on the GPU (synchronised before the clock stops).
torchcodec needs FFmpeg's shared libraries: where it cannot load them the script re-runs
itself with PyAV's bundled FFmpeg on the library path (``mugv_data.ffmpeg_libs``; it has
NVDEC), adding ``/usr/local/cuda/lib64`` (NPP) when present.

    PYTHONPATH=packages/mugv-formats/src:packages/mugv-data/src python3 \\
        packages/mugv-data/benchmarks/nvdec_decode.py --json $OUT/nvdec.json --md $OUT/nvdec.md
    # CPU smoke test (tiny sizes, no GPU):
    uv run python packages/mugv-data/benchmarks/nvdec_decode.py --tiny --device cpu
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REEXEC = "MUGV_NVDEC_BENCH_CHILD"


def torchcodec_error() -> str | None:
    """Why torchcodec cannot load FFmpeg in this process, or None. torchcodec 0.17 imports
    without FFmpeg (it loads the libraries at the first decoder), so the import alone says
    nothing: its loader is called."""
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401

        try:
            from torchcodec._core.ops import load_core_libraries
        except ImportError:  # older torchcodec: the import above loaded FFmpeg
            return None
        load_core_libraries()
    except Exception as e:
        return str(e).splitlines()[0][:300]
    return None


def reexec_with_pyav_ffmpeg(why: str) -> None:
    from mugv_data.ffmpeg_libs import env_with_pyav_ffmpeg

    env = env_with_pyav_ffmpeg(Path(tempfile.gettempdir()) / "mugv-ffmpeg-sonames")
    if Path("/usr/local/cuda/lib64").is_dir():
        env["LD_LIBRARY_PATH"] += os.pathsep + "/usr/local/cuda/lib64"
    env[REEXEC] = why
    print(f"torchcodec: {why}; re-running on PyAV's FFmpeg", flush=True)
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def make_clip(path: Path, frames: int, h: int, w: int) -> Path:
    from mugv_data.synth import scene, write_video

    return write_video(path, scene(frames, h, w, speed=2.0, seed=0), fps=30.0)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def timed(fn, repeats: int, device: str = "cpu") -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best, out


# --- decoders: every frame of the clip, RGB, full size ----------------------------------------
def dec_pyav(path: str, threads: int):
    import av

    def run():
        n = 0
        with av.open(path) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO" if threads != 1 else "SLICE"
            s.codec_context.thread_count = threads
            for f in c.decode(s):
                f.to_ndarray(format="rgb24")
                n += 1
        return n

    return run


def dec_pyav_nvdec(path: str):
    import av
    from av.codec.hwaccel import HWAccel

    def run():
        n = 0
        with av.open(path, hwaccel=HWAccel(device_type="cuda", allow_software_fallback=False)) as c:
            for f in c.decode(c.streams.video[0]):
                f.to_ndarray(format="rgb24")  # downloads to the host, then converts
                n += 1
        return n

    return run


def dec_decord(path: str, threads: int):
    import decord

    def run():
        vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=threads)
        n = 0
        for a in range(0, len(vr), 32):
            n += len(vr.get_batch(list(range(a, min(a + 32, len(vr))))).asnumpy())
        return n

    return run


def dec_torchcodec(path: str, device: str, threads: int = 0):
    from torchcodec.decoders import VideoDecoder

    def run():
        d = VideoDecoder(path, device=device, num_ffmpeg_threads=threads, seek_mode="approximate")
        n = 0
        for a in range(0, len(d), 32):
            n += d.get_frames_in_range(a, min(a + 32, len(d))).data.shape[0]
        return n

    return run


def decode_rows(path: str, n_frames: int, device: str, repeats: int) -> list[dict]:
    cores = os.cpu_count() or 1
    cases = [
        ("PyAV, 1 thread", "cpu", lambda: dec_pyav(path, 1)),
        (f"PyAV, auto threads ({cores} cores)", "cpu", lambda: dec_pyav(path, 0)),
        ("decord, 1 thread", "cpu", lambda: dec_decord(path, 1)),
        (f"decord, auto threads ({cores} cores)", "cpu", lambda: dec_decord(path, 0)),
        ("torchcodec CPU, 1 thread", "cpu", lambda: dec_torchcodec(path, "cpu", 1)),
        (
            f"torchcodec CPU, auto threads ({cores} cores)",
            "cpu",
            lambda: dec_torchcodec(path, "cpu", 0),
        ),
    ]
    if device.startswith("cuda"):
        cases += [
            ("torchcodec NVDEC (frames on GPU)", device, lambda: dec_torchcodec(path, device)),
            ("PyAV NVDEC (hwaccel=cuda, frames to host RGB)", "cpu", lambda: dec_pyav_nvdec(path)),
        ]
    rows = []
    for name, dev, make in cases:
        try:
            fn = make()
            fn()  # warm-up (opens codecs, CUDA context)
            dt, n = timed(fn, repeats, dev)
            if n != n_frames:
                raise RuntimeError(f"decoded {n} frames, expected {n_frames}")
            rows.append({"decoder": name, "seconds": round(dt, 4), "fps": round(n / dt, 1)})
        except Exception as e:  # a decoder missing here is a row with its reason
            rows.append({"decoder": name, "error": f"{type(e).__name__}: {str(e)[:300]}"})
        print(rows[-1], flush=True)
    return rows


# --- decode + embed + aesthetic ---------------------------------------------------------------
def build_scorer(device: str, tiny: bool):
    import torch
    from mugv_data.stages.aesthetic import AestheticScorer, build_head
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    dims = dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16
    )
    if tiny:
        dims = dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
        )
    cfg = CLIPVisionConfig(**dims, image_size=224, patch_size=14, projection_dim=768)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = CLIPVisionModelWithProjection(cfg).to(dtype)
    return AestheticScorer(model, build_head(768), device)


def gpu_preprocess(x_N3HW, size: int):
    """CLIP preprocessing on the GPU: bicubic (antialiased) resize of the short side, centre
    crop, scale, normalise (the same steps as ``clip_preprocess``, in torch)."""
    import torch
    from mugv_data.stages.aesthetic import CLIP_MEAN, CLIP_STD

    h, w = x_N3HW.shape[-2:]
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    x = torch.nn.functional.interpolate(
        x_N3HW.float(), size=(nh, nw), mode="bicubic", antialias=True, align_corners=False
    )
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top : top + size, left : left + size] / 255.0
    mean = torch.as_tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.as_tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def pipeline_rows(paths: list[str], device: str, frames_per_clip: int, tiny: bool) -> list[dict]:
    """Each clip: decode every frame (as curation does for the shot split), take
    ``frames_per_clip`` evenly spaced frames, CLIP embedding + aesthetic score."""
    import torch
    from mugv_data.stages.aesthetic import clip_preprocess

    scorer = build_scorer(device, tiny)
    size = scorer.size
    dtype = next(scorer.model.parameters()).dtype

    def score(pix):
        with torch.inference_mode():
            emb = scorer.model(pixel_values=pix.to(scorer.device, dtype)).image_embeds.float()
            emb = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            return scorer.head(emb)

    def cpu_path():
        import av

        for p in paths:
            with av.open(p) as c:
                s = c.streams.video[0]
                s.thread_type = "SLICE"
                s.codec_context.thread_count = 1
                frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
            pick = np.linspace(0, len(frames) - 1, frames_per_clip).round().astype(int)
            score(torch.from_numpy(clip_preprocess(np.stack([frames[i] for i in pick]), size)))

    def gpu_path():
        from torchcodec.decoders import VideoDecoder

        dev = device if device.startswith("cuda") else "cpu"
        for p in paths:
            d = VideoDecoder(p, device=dev, seek_mode="approximate")
            x = d.get_frames_in_range(0, len(d)).data  # every frame, on the decoding device
            pick = torch.linspace(0, len(d) - 1, frames_per_clip).round().long()
            score(gpu_preprocess(x[pick.to(x.device)], size))

    rows = []
    for name, fn in (
        ("PyAV decode (1 thread) + CPU preprocessing + CLIP/aesthetic on " + device, cpu_path),
        ("torchcodec decode on " + device + " + preprocessing on it + CLIP/aesthetic", gpu_path),
    ):
        try:
            fn()  # warm-up
            dt, _ = timed(fn, 1, device)
            rows.append(
                {
                    "path": name,
                    "clips": len(paths),
                    "seconds": round(dt, 3),
                    "clips_per_hour": round(len(paths) / dt * 3600),
                }
            )
        except Exception as e:
            rows.append({"path": name, "error": f"{type(e).__name__}: {str(e)[:300]}"})
        print(rows[-1], flush=True)
    return rows


def markdown(r: dict) -> str:
    a = r["args"]
    lines = [
        "# NVDEC decode and decode + embed + aesthetic (`nvdec_decode.json`)",
        "",
        f"- Device: {r['device']}; date {r['date']}; torch {r['torch']}, torchcodec "
        f"{r['torchcodec']} on FFmpeg {r['torchcodec_ffmpeg']} ({r['ffmpeg_source']}).",
        f"- Command (repo root): `{r['command']}`",
        f"- Clip: {a['width']}x{a['height']} H.264 (libx264, yuv420p), {a['frames']} frames at "
        f"30 fps; best of {a['repeats']}.",
        "",
        "| decoder | seconds | frames/s |",
        "|---|---|---|",
    ]
    for row in r["decode"]:
        lines.append(
            f"| {row['decoder']} | {row.get('seconds', '-')} | "
            f"{row.get('fps', 'error: ' + row.get('error', ''))} |"
        )
    lines += [
        "",
        f"Pipeline: {a['clips']} clips, {a['frames_per_clip']} frames scored per clip.",
        "",
    ]
    lines += ["| path | clips | seconds | clips/hour |", "|---|---|---|---|"]
    for row in r["pipeline"]:
        lines.append(
            f"| {row['path']} | {row.get('clips', '-')} | {row.get('seconds', '-')} | "
            f"{row.get('clips_per_hour', 'error: ' + row.get('error', ''))} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny clip and model (CPU smoke test)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--frames-per-clip", type=int, default=4)
    ap.add_argument(
        "--ffmpeg",
        choices=["auto", "pyav"],
        default="auto",
        help="FFmpeg for torchcodec: the host's when it loads (auto), or PyAV's bundled one",
    )
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    args = ap.parse_args()
    if args.tiny:
        args.width, args.height, args.frames, args.clips, args.repeats = 160, 96, 24, 2, 1
    why = "--ffmpeg pyav" if args.ffmpeg == "pyav" else torchcodec_error()
    if why is not None and REEXEC not in os.environ:
        reexec_with_pyav_ffmpeg(why)
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="nvdec-bench-"))
    try:
        clip = str(make_clip(tmp / "clip.mp4", args.frames, args.height, args.width))
        decode = decode_rows(clip, args.frames, args.device, args.repeats)
        pipeline = pipeline_rows([clip] * args.clips, args.device, args.frames_per_clip, args.tiny)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        import torchcodec
        import torchcodec._core.ops as ops

        tc_version, tc_ffmpeg = torchcodec.__version__, ops.ffmpeg_major_version
    except Exception as e:
        tc_version, tc_ffmpeg = f"unavailable: {e}", None
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "none"
    result = {
        "benchmark": "nvdec_decode",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": f"GPU {gpu}; CPU {platform.machine()}, {os.cpu_count()} logical cores",
        "torch": torch.__version__,
        "torchcodec": tc_version,
        "torchcodec_ffmpeg": tc_ffmpeg,
        "ffmpeg_source": "PyAV's bundled FFmpeg" if REEXEC in os.environ else "the host's",
        "command": "python3 packages/mugv-data/benchmarks/nvdec_decode.py "
        + " ".join(sys.argv[1:]),
        "args": vars(args),
        "decode": decode,
        "pipeline": pipeline,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.md:
        Path(args.md).write_text(markdown(result) + "\n")


if __name__ == "__main__":
    main()
