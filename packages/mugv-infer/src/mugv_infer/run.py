"""What the commands do: :func:`check` every input (no model loaded), then :func:`generate`
or :func:`enhance`. Errors are ``ValueError`` naming the thing."""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import mugv_formats as mf
import numpy as np
import torch
import yaml
from mugv_vae.checkpoint import checkpoint_id

from mugv_infer.cache_calibration import step_cache_threshold
from mugv_infer.config import GenerateConfig
from mugv_infer.enhancer import MUGVEnhancePipeline, load_loras
from mugv_infer.graphed import apply_graphed_blocks
from mugv_infer.latent_shards import latent_header, write_latent_shards
from mugv_infer.low_memory import low_memory_runtime
from mugv_infer.optimize import compile_blocks
from mugv_infer.outputs import (
    OutputError,
    OutputPlan,
    check_append,
    check_append_header,
    plan_outputs,
    resolved_path,
    video_paths,
)
from mugv_infer.parallel import init_parallel, parallelize_pipeline
from mugv_infer.pipeline import MUGVPipeline, with_aesthetic_score
from mugv_infer.progress import StageProgress, track_stages
from mugv_infer.quantize import apply_quantization
from mugv_infer.release import NULL_CAPTION, apply_preset
from mugv_infer.rewriter import rewrite_prompts
from mugv_infer.sizes import check_frames, check_size, frame_size, num_frames
from mugv_infer.video_io import load_image, load_video, save_video
from mugv_infer.wan_enhancer.chain import check_enhance, enhance_frames, free_generation


@dataclass
class Plan:
    """What :func:`check` found: sizes, where to run, the conditioning already read (tensors
    in [-1, 1] at the output size) and where the outputs go."""

    height: int
    width: int
    frames: int
    device: torch.device
    dtype: torch.dtype
    image: torch.Tensor | None = None
    last_image: torch.Tensor | None = None
    video: torch.Tensor | None = None
    outputs: OutputPlan | None = None


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ValueError(f"{what} folder {path.parent} has no config.json (missing or unfinished)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _read_weights_config(folder: Path, what: str, format: str) -> dict:
    """The ``config`` of a mugv weights folder (``format``), its weights files present."""
    try:
        meta = mf.read_weights_config(folder, format=format)
    except mf.FormatError as e:
        raise ValueError(f"{what} folder {folder}: {e}") from None
    for name in meta.get("files") or {}:
        if not (folder / name).is_file():
            raise ValueError(f"{what} folder {folder}: weights file {name} is missing")
    return meta["config"]


def check_parts(model: Path, vae: Path, text_encoder: Path | None) -> dict:
    """Check the three parts fit each other from their config files; returns the DiT config."""
    dit = _read_json(model / "config.json", "model")
    if "format" in dit:  # a mugv.dit-export folder; else a diffusers-saved transformer
        dit = _read_weights_config(model, "model", mf.DIT_EXPORT_FORMAT)
    elif not any(model.glob("*.safetensors")):
        raise ValueError(f"model folder {model}: no .safetensors weights")
    vae_config = _read_weights_config(vae, "vae", mf.VAE_CHECKPOINT_FORMAT)
    c_vae = vae_config.get("latent_channels", 24)
    c_dit = dit.get("in_channels", 24)
    if c_vae != c_dit:
        raise ValueError(
            f"vae {vae} makes {c_vae} latent channels but model {model} takes in_channels={c_dit}"
        )
    if text_encoder is not None:
        t5 = _read_json(text_encoder / "config.json", "text encoder")
        d = t5.get("d_model")
        if d is not None and d != dit.get("text_dim", 4096):
            raise ValueError(
                f"text encoder {text_encoder} gives {d}-wide features but model {model} "
                f"takes text_dim={dit.get('text_dim', 4096)}"
            )
    return dit


def _read_image(
    path: Path | None, what: str, height: int, width: int, crop_rounding: str = "floor"
) -> torch.Tensor | None:
    """The whole image decoded now (a header check passes truncated files), at the output
    size: ``[3, H, W]`` in [-1, 1]."""
    if path is None:
        return None
    try:
        return load_image(path, height, width, crop_rounding)
    except ValueError as e:
        raise ValueError(str(e).replace("image ", f"{what} ", 1)) from None


def _claim_settings(cfg) -> dict:
    """What shapes an output's contents (the run's settings without the output switches)."""
    return {
        k: v for k, v in cfg.model_dump(mode="json").items() if k not in ("overwrite", "append")
    }


def _outputs(cfg, n_videos: int) -> OutputPlan:
    inputs = [cfg.model, cfg.vae, cfg.text_encoder, *(a.path for a in cfg.lora)]
    inputs += [getattr(cfg, name, None) for name in ("image", "last_image", "video")]
    rank = int(os.environ.get("RANK", "0"))  # only rank 0 writes; the others only check
    return plan_outputs(cfg, n_videos, inputs, settings=_claim_settings(cfg), claim=rank == 0)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"runtime.device {name!r} is not a device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"runtime.device {name!r} but no CUDA GPU is visible")
    return dev


def check(cfg) -> Plan:
    """Validate a Generate/EnhanceConfig without loading any model: the parts' configs, the
    sizes, the conditioning (decoded now), the output paths (claimed now: see
    :mod:`mugv_infer.outputs`)."""
    dit = check_parts(cfg.model, cfg.vae, cfg.text_encoder)
    if cfg.text_encoder is None and any(cfg.prompt):
        raise ValueError("prompts need --text-encoder (a local T5 folder)")
    height, width = frame_size(cfg.resolution, cfg.aspect_ratio)
    check_size(height, width)
    rt = cfg.runtime
    world = int(os.environ.get("WORLD_SIZE", "1"))
    need = rt.sequence_parallel * (2 if rt.cfg_parallel else 1)
    if need != world:
        raise ValueError(
            f"runtime.sequence_parallel={rt.sequence_parallel} x cfg_parallel="
            f"{2 if rt.cfg_parallel else 1} needs {need} processes, running {world} "
            f"(launch with torchrun --nproc_per_node {need})"
        )
    device = _device(rt.device)
    dtype = torch.bfloat16 if rt.dtype == "bfloat16" else torch.float32
    for adapter in cfg.lora:
        if not (adapter.path / "adapter_config.json").is_file():
            raise ValueError(f"LoRA folder {adapter.path} has no adapter_config.json")
    if isinstance(cfg, GenerateConfig):
        frames = num_frames(cfg.frames)
        check_frames(frames)
        if cfg.output_type == "video" and cfg.out.suffix.lower() not in (".mp4", ".gif", ""):
            raise ValueError(f"out {cfg.out}: use .mp4, .gif or a folder (frames)")
        if cfg.append and cfg.output_type != "latent":
            raise ValueError("--append is for --output-type latent (a latent dataset)")
        _check_rewriter(cfg)
        check_enhance(cfg.enhance, cfg.output_type, frames)
        plan = Plan(height, width, frames, device, dtype)
        crop = cfg.choices.crop_rounding
        plan.image = _read_image(cfg.image, "image", height, width, crop)
        plan.last_image = _read_image(cfg.last_image, "last image", height, width, crop)
        if cfg.video is not None:
            plan.video = load_video(cfg.video, height, width, max_frames=frames - 1)
        n_videos = len(cfg.prompt) * cfg.num_videos_per_prompt
        if cfg.append:
            _check_append_parts(cfg, dit)
    else:
        plan = Plan(height, width, 0, device, dtype)
        plan.video = load_video(cfg.video, height, width)
        n_videos = 1
    plan.outputs = _outputs(cfg, n_videos)
    return plan


def _check_append_parts(cfg, dit: dict) -> None:
    """``--append``: the parts' ids and widths against the dataset's header, before loading
    (the statistics are compared again once the VAE is loaded)."""
    check_append(cfg.out, cfg)
    header = mf.LatentDataset(cfg.out).header
    ours = {
        "vae_checkpoint_id": checkpoint_id(cfg.vae),
        "latent_channels": dit.get("in_channels", 24),
        "text_encoder_id": None if cfg.text_encoder is None else Path(cfg.text_encoder).name,
        "text_dim": dit.get("text_dim", 4096) if cfg.text_encoder is not None else None,
    }
    for field, value in ours.items():
        if getattr(header, field) != value:
            raise ValueError(
                f"--append: {cfg.out}/dataset.json has {field}={getattr(header, field)!r}, "
                f"the generated samples {value!r}; refusing to mix them in one dataset"
            )
    prefix = f"gen-s{cfg.seed}-"
    clash = [r.key for r in mf.LatentDataset(cfg.out).records() if r.key.startswith(prefix)]
    if clash:
        raise ValueError(
            f"--append: {cfg.out} already holds samples of seed {cfg.seed} ({clash[0]}, ...); "
            "use another --seed"
        )


def _build(cfg, plan: Plan, pipeline_class):
    rt = low_memory_runtime(cfg.runtime, cuda=plan.device.type == "cuda")
    groups = init_parallel(rt.sequence_parallel, 2 if rt.cfg_parallel else 1)
    device = plan.device
    if device.type == "cuda" and groups.world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    choices = getattr(cfg, "choices", None)
    release_numerics = choices is not None and choices.numerics == "release"
    pipe = pipeline_class.from_parts(
        cfg.model, cfg.vae, cfg.text_encoder, torch_dtype=plan.dtype,
        text_encoder_dtype=torch.float32 if release_numerics else None,
    )  # fmt: skip
    if choices is not None:
        apply_preset(pipe, choices)
    if cfg.lora:  # fused into the full-precision weights, before quantization / compile
        load_loras(pipe.transformer, [(a.path, a.weight) for a in cfg.lora], fuse=True)
    pipe.transformer.set_attention_backend(rt.attention_backend)
    pipe.transformer.set_attention_pad_head_dim(rt.attention_pad_head_dim)
    pipe.transformer.set_fused_ops(rt.fused_ops)
    pipe.fp8_report = apply_quantization(pipe.transformer, rt, device)  # layer by layer
    if rt.cpu_offload and device.type == "cuda":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    if rt.vae_tile is not None:
        pipe.enable_vae_tiling(rt.vae_tile, max(1, rt.vae_tile // 4))
    if rt.compile:
        compile_blocks(pipe.transformer)
    if rt.graphed_step and device.type == "cuda":
        apply_graphed_blocks(pipe.transformer)
    parallelize_pipeline(pipe, groups)
    return pipe, groups


def _write_config(cfg, out: Path, folder: Path | None = None) -> Path:
    target = resolved_path(out, folder)
    mf.atomic_write_text(target, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return target


def _save_videos(frames_BFHW3, out: Path, fps: float, folder: Path | None = None) -> list[Path]:
    targets = video_paths(out, len(frames_BFHW3), folder)
    for video, target in zip(frames_BFHW3, targets):
        save_video(np.round(np.asarray(video) * 255).astype(np.uint8), target, fps)
    return targets


@contextlib.contextmanager
def _writing(out: Path):
    """An error of the disk while writing the outputs (full, read-only, quota) -> one line."""
    try:
        yield
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        raise OutputError(f"--out {out}: cannot write: {e.strerror or e}{where}") from None


def _finish(cfg, plan: Plan, write) -> list[Path]:
    """Write the outputs through ``write(path)`` at the planned place, the resolved settings
    last, then put a replacement in place; returns the paths under ``cfg.out``."""
    outputs = plan.outputs
    with _writing(cfg.out):
        paths = write(outputs.write_path)
        _write_config(cfg, cfg.out, outputs.write_path)
        outputs.commit()
    if outputs.write_path == cfg.out:
        return paths
    return [cfg.out / p.relative_to(outputs.write_path) for p in paths]


_PIPELINE_SETTINGS = (
    "prompt",
    "negative_prompt",
    "image",
    "last_image",
    "video",
    "guidance_scale",
    "guidance_rescale",
    "num_videos_per_prompt",
    "fps",
    "aesthetic_score",
)
"""GenerateConfig fields passed to MUGVPipeline under the same name."""


def generate(cfg, plan: Plan) -> list[Path]:
    done = {}
    if cfg.rewrite_prompt and cfg.rewritten_prompt is None:
        # before the video models load; stored in the resolved settings
        t0 = time.perf_counter()
        cfg.rewritten_prompt = rewrite_prompts(cfg, plan.device)
        done["rewrite"] = time.perf_counter() - t0
    pipe, groups = _build(cfg, plan, MUGVPipeline)
    progress = StageProgress(
        ["text", "DiT", "decode"], done=done, enabled=int(os.environ.get("RANK", "0")) == 0
    )
    settings = {name: getattr(cfg, name) for name in _PIPELINE_SETTINGS}
    if settings["negative_prompt"] is None:  # the setting's None: the learned null caption
        settings["negative_prompt"] = NULL_CAPTION
    settings.update(image=plan.image, last_image=plan.last_image, video=plan.video)
    settings["prompt"] = encoded_prompts(cfg)
    if cfg.output_type == "latent" and cfg.append and groups.rank == 0:
        check_append_header(cfg.out, _latent_header(pipe))
    with track_stages(pipe, progress):
        out = pipe(
            **settings,
            height=plan.height,
            width=plan.width,
            num_frames=plan.frames,
            num_inference_steps=cfg.steps,
            generator=torch.Generator().manual_seed(cfg.seed),
            output_type="latent" if cfg.output_type == "latent" else "np",
            step_cache_threshold=step_cache_threshold(cfg.runtime),
        )
    progress.close()
    if groups.rank != 0:
        return []
    if cfg.enhance.path is not None:  # the release's Wan-based enhancer, video by video
        free_generation(pipe)
        out.frames = enhance_frames(
            cfg.enhance, out.frames, device=plan.device, dtype=plan.dtype, seed=cfg.seed,
            cpu_offload=cfg.runtime.cpu_offload,
        )  # fmt: skip
    if cfg.output_type == "latent":
        # captions are the texts actually encoded (with the aesthetic-score suffix)
        encoded = with_aesthetic_score(encoded_prompts(cfg), cfg.aesthetic_score)
        prompts = [p for p in encoded for _ in range(cfg.num_videos_per_prompt)]

        def write(path: Path) -> list[Path]:
            return [
                write_latent_shards(
                    path,
                    out.frames,
                    vae=pipe.vae,
                    vae_checkpoint_id=pipe.vae_checkpoint_id,
                    prompts=prompts,
                    prompt_embeds=out.prompt_embeds,
                    prompt_attention_mask=out.prompt_attention_mask,
                    fps=cfg.output_fps,
                    num_frames=plan.frames,
                    height=plan.height,
                    width=plan.width,
                    text_encoder_id=pipe.text_encoder_id,
                    key_prefix=f"gen-s{cfg.seed}-" if cfg.append else "gen",
                    extra={"seed": cfg.seed, "guidance_scale": cfg.guidance_scale},
                    config=cfg.model_dump(mode="json"),
                    append=cfg.append,
                )
            ]

        if cfg.append:  # the dataset's own header stays; no settings file inside it
            with _writing(cfg.out):
                return write(cfg.out)
        return _finish(cfg, plan, write)
    return _finish(cfg, plan, lambda path: _save_videos(out.frames, cfg.out, cfg.output_fps, path))


def encoded_prompts(cfg) -> list[str]:
    """The prompts the text encoder gets: the rewritten ones when there are."""
    return list(cfg.rewritten_prompt) if cfg.rewritten_prompt is not None else list(cfg.prompt)


def _check_rewriter(cfg) -> None:
    if cfg.rewritten_prompt is not None:
        if len(cfg.rewritten_prompt) != len(cfg.prompt):
            raise ValueError(
                f"rewritten_prompt has {len(cfg.rewritten_prompt)} prompts, prompt has "
                f"{len(cfg.prompt)}"
            )
        return
    if cfg.rewrite_prompt:
        if cfg.rewriter is None:
            raise ValueError("--rewrite-prompt needs --rewriter PATH (a local LLM folder)")
        if not (cfg.rewriter / "config.json").is_file():
            raise ValueError(
                f"rewriter folder {cfg.rewriter} has no config.json (a local LLM folder)"
            )


def _latent_header(pipe):
    """The header the generated latents will get (to compare with an --append target)."""
    return latent_header(
        vae=pipe.vae,
        vae_checkpoint_id=pipe.vae_checkpoint_id,
        latent_channels=pipe.transformer.config.in_channels,
        text_encoder_id=pipe.text_encoder_id,
        text_dim=pipe.transformer.config.text_dim if pipe.text_encoder is not None else None,
    )


def enhance(cfg, plan: Plan) -> list[Path]:
    video = plan.video
    keep = 1 + (video.shape[1] - 1) // 8 * 8
    pipe, groups = _build(cfg, plan, MUGVEnhancePipeline)
    out = pipe(
        video[:, :keep],
        prompt=cfg.prompt,
        negative_prompt=cfg.negative_prompt,
        strength=cfg.strength,
        num_inference_steps=cfg.steps,
        guidance_scale=cfg.guidance_scale,
        generator=torch.Generator().manual_seed(cfg.seed),
        fps=cfg.fps,
    )
    if groups.rank != 0:
        return []
    return _finish(cfg, plan, lambda path: _save_videos(out.frames, cfg.out, cfg.output_fps, path))
