"""What the commands do: :func:`check` every input (no model loaded), then :func:`generate`
or :func:`enhance`. Errors are ``ValueError`` naming the thing."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import mugv_formats as mf
import numpy as np
import torch
import yaml
from PIL import Image, UnidentifiedImageError

from mugv_infer.config import GenerateConfig
from mugv_infer.enhancer import MUGVEnhancePipeline, load_lora
from mugv_infer.latent_shards import write_latent_shards
from mugv_infer.optimize import compile_blocks
from mugv_infer.parallel import init_parallel, parallelize_pipeline
from mugv_infer.pipeline import MUGVPipeline, with_aesthetic_score
from mugv_infer.sizes import check_frames, check_size, frame_size, num_frames
from mugv_infer.video_io import load_video, save_video


@dataclass
class Plan:
    height: int
    width: int
    frames: int
    device: torch.device
    dtype: torch.dtype


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


def _check_image(path: Path | None, what: str) -> None:
    if path is None:
        return
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist")
    try:
        with Image.open(path) as im:
            im.verify()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{what} {path} is not a readable image ({e})") from None


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
    """Validate a Generate/EnhanceConfig without loading any model."""
    check_parts(cfg.model, cfg.vae, cfg.text_encoder)
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
    if isinstance(cfg, GenerateConfig):
        frames = num_frames(cfg.frames)
        check_frames(frames)
        _check_image(cfg.image, "image")
        _check_image(cfg.last_image, "last image")
        if cfg.video is not None and not cfg.video.is_file():
            raise ValueError(f"video {cfg.video} does not exist")
        if cfg.output_type == "video" and cfg.out.suffix.lower() not in (".mp4", ".gif", ""):
            raise ValueError(f"out {cfg.out}: use .mp4, .gif or a folder (frames)")
    else:
        frames = 0
        if not cfg.video.is_file():
            raise ValueError(f"video {cfg.video} does not exist")
        if cfg.lora is not None and not (cfg.lora / "adapter_config.json").is_file():
            raise ValueError(f"LoRA folder {cfg.lora} has no adapter_config.json")
    device = _device(rt.device)
    dtype = torch.bfloat16 if rt.dtype == "bfloat16" else torch.float32
    return Plan(height, width, frames, device, dtype)


def _build(cfg, plan: Plan, pipeline_class):
    rt = cfg.runtime
    groups = init_parallel(rt.sequence_parallel, 2 if rt.cfg_parallel else 1)
    device = plan.device
    if device.type == "cuda" and groups.world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    pipe = pipeline_class.from_parts(cfg.model, cfg.vae, cfg.text_encoder, torch_dtype=plan.dtype)
    pipe.transformer.set_attention_backend(rt.attention_backend)
    pipe.transformer.set_fused_ops(rt.fused_ops)
    if rt.cpu_offload and device.type == "cuda":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    if rt.vae_tile is not None:
        pipe.enable_vae_tiling(rt.vae_tile, max(1, rt.vae_tile // 4))
    if rt.compile:
        compile_blocks(pipe.transformer)
    parallelize_pipeline(pipe, groups)
    return pipe, groups


def _write_config(cfg, out: Path) -> Path:
    target = (
        out / "resolved_config.yaml"
        if out.suffix == ""
        else out.with_name(out.stem + ".resolved.yaml")
    )
    mf.atomic_write_text(target, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return target


def _save_videos(frames_BFHW3, out: Path, fps: float) -> list[Path]:
    paths = []
    n = len(frames_BFHW3)
    for i, video in enumerate(frames_BFHW3):
        arr = np.round(np.asarray(video) * 255).astype(np.uint8)
        if n == 1:
            target = out
        elif out.suffix:
            target = out.with_name(f"{out.stem}_{i}{out.suffix}")
        else:
            target = out / f"video_{i}"
        paths.append(save_video(arr, target, fps))
    return paths


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
    pipe, groups = _build(cfg, plan, MUGVPipeline)
    out = pipe(
        **{name: getattr(cfg, name) for name in _PIPELINE_SETTINGS},
        height=plan.height,
        width=plan.width,
        num_frames=plan.frames,
        num_inference_steps=cfg.steps,
        generator=torch.Generator().manual_seed(cfg.seed),
        output_type="latent" if cfg.output_type == "latent" else "np",
        step_cache_threshold=cfg.runtime.step_cache_threshold,
    )
    if groups.rank != 0:
        return []
    if cfg.output_type == "latent":
        # captions are the texts actually encoded (with the aesthetic-score suffix)
        encoded = with_aesthetic_score(cfg.prompt, cfg.aesthetic_score)
        prompts = [p for p in encoded for _ in range(cfg.num_videos_per_prompt)]
        paths = [
            write_latent_shards(
                cfg.out,
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
                extra={"seed": cfg.seed, "guidance_scale": cfg.guidance_scale},
                config=cfg.model_dump(mode="json"),
            )
        ]
    else:
        paths = _save_videos(out.frames, cfg.out, cfg.output_fps)
    _write_config(cfg, cfg.out)
    return paths


def enhance(cfg, plan: Plan) -> list[Path]:
    video = load_video(cfg.video, plan.height, plan.width)
    keep = 1 + (video.shape[1] - 1) // 8 * 8
    pipe, groups = _build(cfg, plan, MUGVEnhancePipeline)
    if cfg.lora is not None:
        load_lora(pipe.transformer, cfg.lora, fuse=True)
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
    paths = _save_videos(out.frames, cfg.out, cfg.output_fps)
    _write_config(cfg, cfg.out)
    return paths
