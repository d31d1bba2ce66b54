"""``mugv-infer ui --model FOLDER``: a browser page for generation (gradio, ``mugv-infer[ui]``).

One page over one loaded :class:`MUGVPipeline` (a folder written by ``save_pretrained`` or
``mugv-infer convert``): prompt, optional first-frame image, size, frames, steps, guidance
and seed in; a progress bar over the denoising steps; the video and the settings that made
it out. Jobs run one at a time (gradio's queue, concurrency 1; later ones wait their turn).
A bad value or a failed run is shown in the page as one line (``gradio.Error``), never a
traceback; the traceback of an unexpected failure goes to the server's log only.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UIDefaults:
    """Initial values of the page's fields."""

    height: int = 720
    width: int = 1280
    num_frames: int = 105
    steps: int = 25
    guidance_scale: float = 4.0
    seed: int = 42
    fps: float = 21.0
    """fps of the written file (105 frames = 5 s)."""


@dataclass(frozen=True)
class Job:
    """One generation request (what the page sends; checked by :func:`check_job`)."""

    prompt: str
    image: str | None
    height: int
    width: int
    num_frames: int
    steps: int
    guidance_scale: float
    seed: int


def check_job(job: Job) -> Job:
    """ValueError naming the field and value (before the model runs)."""
    from mugv_infer.sizes import check_frames, check_size

    if not job.prompt or not job.prompt.strip():
        raise ValueError("prompt is empty: describe the video to generate")
    for name in ("height", "width", "num_frames", "steps", "seed"):
        value = getattr(job, name)
        if value is None or float(value) != int(value):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
    check_size(int(job.height), int(job.width))
    check_frames(int(job.num_frames))
    if not 1 <= int(job.steps) <= 1000:
        raise ValueError(f"steps must be in [1, 1000], got {job.steps}")
    if not 0 <= int(job.seed) < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {job.seed}")
    if job.guidance_scale is None or not 1.0 <= float(job.guidance_scale) <= 100.0:
        raise ValueError(f"guidance must be in [1, 100], got {job.guidance_scale}")
    return Job(
        prompt=job.prompt.strip(), image=job.image or None, height=int(job.height),
        width=int(job.width), num_frames=int(job.num_frames), steps=int(job.steps),
        guidance_scale=float(job.guidance_scale), seed=int(job.seed),
    )  # fmt: skip


def run_job(pipe, job: Job, out_dir: Path, fps: float, on_step=None) -> tuple[Path, dict]:
    """Generate ``job`` with ``pipe``; -> (mp4 path, settings shown beside it). ``on_step(i,
    n)`` is called after each denoising step."""
    import numpy as np
    import torch

    from mugv_infer.video_io import save_video

    def callback(_pipe, i, _t, kwargs):
        if on_step is not None:
            on_step(i + 1, job.steps)
        return kwargs

    start = time.perf_counter()
    frames = pipe(
        job.prompt,
        image=job.image,
        height=job.height,
        width=job.width,
        num_frames=job.num_frames,
        num_inference_steps=job.steps,
        guidance_scale=job.guidance_scale,
        generator=torch.Generator().manual_seed(job.seed),
        output_type="np",
        callback_on_step_end=callback,
    ).frames[0]
    seconds = time.perf_counter() - start
    path = out_dir / f"mugv-{time.strftime('%Y%m%d-%H%M%S')}-s{job.seed}.mp4"
    save_video(np.round(frames * 255).astype(np.uint8), path, fps=fps)
    settings = {**asdict(job), "image": Path(job.image).name if job.image else None,
                "fps": fps, "seconds": round(seconds, 2), "file": path.name}  # fmt: skip
    return path, settings


def build_app(pipe, *, outputs: Path | None = None, defaults: UIDefaults | None = None):
    """The gradio ``Blocks`` page over ``pipe`` (not launched; queue of one job at a time)."""
    import gradio as gr

    d = defaults or UIDefaults()
    out_dir = Path(outputs) if outputs is not None else Path(tempfile.mkdtemp(prefix="mugv-ui-"))
    out_dir.mkdir(parents=True, exist_ok=True)

    def generate(prompt, image, height, width, frames, steps, guidance, seed,
                 progress=gr.Progress()):  # noqa: B008  (gradio finds it by its default)
        try:
            job = check_job(Job(prompt, image, height, width, frames, steps, guidance, seed))
            progress(0.0, desc="encoding the prompt")

            def on_step(i, n):
                progress(i / n, desc=f"denoising step {i}/{n}")

            path, settings = run_job(pipe, job, out_dir, d.fps, on_step)
        except ValueError as e:  # user errors and NonFiniteError / OutputError (ValueErrors)
            raise gr.Error(str(e).splitlines()[0], print_exception=False) from None
        except Exception as e:
            log.exception("generation failed")
            raise gr.Error(f"generation failed: {type(e).__name__}: {e}", print_exception=False) from None
        return str(path), settings

    with gr.Blocks(title="mugv video generation") as app:
        gr.Markdown("# mugv video generation\nText (and optional first frame) to video.")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", lines=3, elem_id="prompt")
                image = gr.Image(label="First frame (optional)", type="filepath", elem_id="image")
                with gr.Row():
                    height = gr.Number(d.height, label="Height", precision=0, step=16, elem_id="height")
                    width = gr.Number(d.width, label="Width", precision=0, step=16, elem_id="width")
                    frames = gr.Number(d.num_frames, label="Frames (1 + 8k)", precision=0, step=8,
                                       elem_id="frames")  # fmt: skip
                with gr.Row():
                    steps = gr.Slider(1, 100, d.steps, step=1, label="Steps", elem_id="steps")
                    guidance = gr.Slider(1.0, 15.0, d.guidance_scale, step=0.5, label="Guidance",
                                         elem_id="guidance")  # fmt: skip
                    seed = gr.Number(d.seed, label="Seed", precision=0, elem_id="seed")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                video = gr.Video(label="Video", elem_id="video", autoplay=True)
                settings = gr.JSON(label="Settings", elem_id="settings")
        button.click(
            generate,
            [prompt, image, height, width, frames, steps, guidance, seed],
            [video, settings],
            concurrency_limit=1,
        )
    app.queue(default_concurrency_limit=1)
    return app


def load_pipeline(model: Path, device: str = "auto", dtype: str | None = None):
    """The folder's pipeline on ``device`` (auto: CUDA when there is one) in ``dtype``
    (default bfloat16 on CUDA, float32 on the CPU)."""
    import torch

    from mugv_infer.pipeline import MUGVPipeline

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)  # fmt: skip
    name = dtype or ("bfloat16" if dev.type == "cuda" else "float32")
    pipe = MUGVPipeline.from_pretrained(model, torch_dtype=getattr(torch, name))
    return pipe.to(dev)


def serve(model: Path, *, host: str = "127.0.0.1", port: int = 7860, device: str = "auto",
          dtype: str | None = None, outputs: Path | None = None) -> None:  # fmt: skip
    """Load ``model`` and serve the page until interrupted."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ValueError("the UI needs gradio: pip install 'mugv-infer[ui]'") from None
    pipe = load_pipeline(Path(model), device, dtype)
    build_app(pipe, outputs=outputs).launch(server_name=host, server_port=port, show_error=True)
