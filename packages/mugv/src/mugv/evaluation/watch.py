"""``mugv eval watch RUN``: render a training run's sample exports to mp4 and TensorBoard.

A mugv-dit (or mugv-align) run with ``samples.every_steps`` writes its weights every N steps
as ``RUN/samples/exports/step_NNNNNNN/`` (a ``mugv.dit-export`` whose metadata holds the
run's ``samples`` settings: prompts, seeds, size, frames, fps, sampler steps, guidance; see
``mugv_dit.samples``). mugv-dit may not import mugv-infer; this umbrella command may. For
each export not yet rendered, oldest first, it runs mugv-infer's pipeline (the export, the
VAE checkpoint ``--vae``, the T5 folder ``--text-encoder``) once per (prompt, seed) with a
fresh ``torch.Generator().manual_seed(seed)``, so every step renders the same noise, and
writes

    RUN/samples/videos/step_NNNNNNN/p{prompt index}_s{seed}.mp4   H.264, the run's fps
    RUN/samples/videos/step_NNNNNNN/index.json                    written last: done
    RUN/tensorboard/samples/                                      an animated GIF per
                                                                  (prompt, seed) at step N,
                                                                  tag samples/p{i}_s{seed}

``--once`` renders what is there and exits; otherwise it polls every ``--interval`` seconds
until interrupted (run it beside the training job, on a spare GPU or the CPU). An export the
trainer removed while it was being read (``samples.keep``) is skipped with a message.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

HELP = "render a training run's sample exports (fixed prompts and seeds) to mp4 + TensorBoard"

EXPORTS = Path("samples") / "exports"
VIDEOS = Path("samples") / "videos"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="the training run folder (its output_dir)")
    p.add_argument("--vae", type=Path, required=True, help="mugv.vae-checkpoint folder")
    p.add_argument("--text-encoder", type=Path, required=True, help="local T5 folder")
    p.add_argument("--once", action="store_true", help="render what is there, then exit")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between polls")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when present)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")


def pending_exports(run: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete sample export without a finished render, by step."""
    from mugv_formats import DIT_EXPORT_FORMAT
    from mugv_formats.checkpoint_dirs import checkpoint_step
    from mugv_formats.outputs import artifact_kind

    root = run / EXPORTS
    out = []
    for p in sorted(root.glob("step_*")) if root.is_dir() else []:
        step = checkpoint_step(p.name)
        if step is None or artifact_kind(p) != DIT_EXPORT_FORMAT:
            continue  # an export being written (or not ours)
        if (run / VIDEOS / p.name / "index.json").is_file():
            continue
        out.append((step, p))
    return out


def sample_settings(export: Path) -> dict:
    """The ``samples`` settings the trainer stored in an export's metadata."""
    header = json.loads((export / "config.json").read_text())
    settings = (header.get("extra") or {}).get("samples")
    if not isinstance(settings, dict) or not settings.get("prompts"):
        raise ValueError(
            f"{export}: not a sample export (its metadata has no samples.prompts; written by "
            "a mugv-dit run with samples.every_steps)"
        )
    return settings


def gif_summary(tag: str, frames_THW3, fps: float):
    """A TensorBoard image summary holding ``frames_THW3`` (uint8) as an animated GIF, what
    ``SummaryWriter.add_video`` writes (without moviepy: Pillow encodes it)."""
    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    images = [Image.fromarray(f) for f in frames_THW3]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(1, round(1000 / fps)), loop=0)  # fmt: skip
    _, h, w, c = frames_THW3.shape
    image = Summary.Image(height=h, width=w, colorspace=c, encoded_image_string=buf.getvalue())
    return Summary(value=[Summary.Value(tag=tag, image=image)])


def render_export(export: Path, step: int, run: Path, *, vae: Path, text_encoder: Path,
                  device: str, dtype: str) -> dict:  # fmt: skip
    """Render one sample export (module doc); returns its index."""
    import numpy as np
    import torch
    from mugv_formats import atomic_write_text
    from mugv_infer import MUGVPipeline
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    from mugv.media import write_mp4

    s = sample_settings(export)
    torch_dtype = getattr(torch, dtype)
    pipe = MUGVPipeline.from_parts(export, vae, text_encoder, torch_dtype=torch_dtype)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    out = run / VIDEOS / export.name
    out.mkdir(parents=True, exist_ok=True)
    tb = EventFileWriter(str(run / "tensorboard" / "samples"))
    entries = []
    try:
        for i, prompt in enumerate(s["prompts"]):
            for seed in s["seeds"]:
                res = pipe(
                    prompt=[prompt],
                    height=s["height"],
                    width=s["width"],
                    num_frames=s["num_frames"],
                    num_inference_steps=s["inference_steps"],
                    guidance_scale=s["guidance_scale"],
                    generator=torch.Generator().manual_seed(int(seed)),
                    fps=s["fps"],
                    output_type="np",
                )
                frames = np.round(np.asarray(res.frames[0]) * 255).astype(np.uint8)  # [F, H, W, 3]
                name = f"p{i}_s{seed}"
                write_mp4(frames, out / f"{name}.mp4", fps=s["fps"])
                summary = gif_summary(f"samples/{name}", frames, s["fps"])
                tb.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
                entries.append({"prompt": prompt, "seed": int(seed), "file": f"{name}.mp4",
                                "frames": int(frames.shape[0])})  # fmt: skip
    finally:
        tb.close()
    index = {"step": step, "export": str(export), "settings": s, "videos": entries}
    atomic_write_text(out / "index.json", json.dumps(index, indent=1) + "\n")
    return index


def watch(run: Path, *, vae: Path, text_encoder: Path, once: bool = False,
          interval: float = 60.0, device: str | None = None, dtype: str = "float32",
          max_polls: int | None = None) -> list[dict]:  # fmt: skip
    """Render every pending sample export of ``run``; poll for more unless ``once``
    (``max_polls`` bounds the polls, for tests). Returns the indices written."""
    import torch

    run = Path(run)
    for name, p in (("run", run), ("--vae", vae), ("--text-encoder", text_encoder)):
        if not Path(p).is_dir():
            raise FileNotFoundError(f"{name} {p} is not a folder")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    done, polls = [], 0
    while True:
        for step, export in pending_exports(run):
            try:
                index = render_export(export, step, run, vae=vae, text_encoder=text_encoder,
                                      device=device, dtype=dtype)  # fmt: skip
            except FileNotFoundError as e:  # removed by the trainer (samples.keep) meanwhile
                print(f"skipped {export.name}: {e}", flush=True)
                continue
            done.append(index)
            print(f"step {step}: {len(index['videos'])} videos in "
                  f"{run / VIDEOS / export.name}", flush=True)  # fmt: skip
        polls += 1
        if once or (max_polls is not None and polls >= max_polls):
            return done
        time.sleep(interval)


def run(args: argparse.Namespace) -> int:
    try:
        watch(args.run, vae=args.vae, text_encoder=args.text_encoder, once=args.once,
              interval=args.interval, device=args.device, dtype=args.dtype)  # fmt: skip
    except KeyboardInterrupt:
        return 130
    return 0
