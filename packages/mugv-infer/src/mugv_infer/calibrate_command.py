"""``mugv-infer calibrate-cache``: the step-cache calibration of :mod:`mugv_infer.cache_calibration`
run on real parts (model, VAE, T5) over the given prompts; writes the curve and the chosen
threshold as JSON (``--out``, default ``step_cache_calibration.json``) and the resolved
settings beside it. ``generate --set runtime.step_cache_calibration=FILE`` then uses it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import yaml
from pydantic import Field

from mugv_infer.cache_calibration import (
    CALIBRATION_KIND,
    DEFAULT_MAX_REL_L2,
    DEFAULT_THRESHOLDS,
    calibrate,
    write_calibration,
)
from mugv_infer.config import GenerateConfig


class CalibrateCacheConfig(GenerateConfig):
    """``mugv-infer calibrate-cache`` (the generation settings, plus the candidates)."""

    thresholds: list[float] = Field(
        default_factory=lambda: list(DEFAULT_THRESHOLDS),
        min_length=1,
        description="Candidate step-cache thresholds (> 0).",
    )
    max_rel_l2: float = Field(
        DEFAULT_MAX_REL_L2, gt=0, le=10, description="Allowed final-latent deviation."
    )
    out: Path = Field(Path("step_cache_calibration.json"), description="The JSON written.")


def check_json_out(out: Path, command: str, key: str, value: str, overwrite: bool) -> None:
    """Before any model loads: ``out`` is a .json, and an existing file there is one of ours
    (its ``key`` is ``value``, not a symlink) that ``overwrite`` allows replacing."""
    if out.suffix.lower() != ".json":
        raise ValueError(f"out {out}: {command} writes a .json file")
    if out.exists() or out.is_symlink():
        try:
            ours = json.loads(out.read_text()).get(key) == value
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours or out.is_symlink():
            raise ValueError(f"out {out} exists and is not a calibration file of ours")
        if not overwrite:
            raise ValueError(f"out {out} exists (--overwrite replaces it)")


def check_out(cfg: CalibrateCacheConfig) -> None:
    if cfg.out.suffix.lower() == ".json" and min(cfg.thresholds) <= 0:
        raise ValueError(f"thresholds must be > 0, got {cfg.thresholds}")
    check_json_out(cfg.out, "calibrate-cache", "kind", CALIBRATION_KIND, cfg.overwrite)


def run_calibration(cfg: CalibrateCacheConfig) -> Path:
    from mugv_infer import run
    from mugv_infer.pipeline import MUGVPipeline
    from mugv_infer.sizes import check_frames, check_size, frame_size, num_frames

    check_out(cfg)
    run.check_parts(cfg.model, cfg.vae, cfg.text_encoder)
    if cfg.text_encoder is None:
        raise ValueError("calibrate-cache needs --text-encoder (a local T5 folder)")
    height, width = frame_size(cfg.resolution, cfg.aspect_ratio)
    check_size(height, width)
    frames = num_frames(cfg.frames)
    check_frames(frames)
    device = run._device(cfg.runtime.device)
    dtype = torch.bfloat16 if cfg.runtime.dtype == "bfloat16" else torch.float32
    plan = run.Plan(height, width, frames, device, dtype)
    pipe, _groups = run._build(cfg, plan, MUGVPipeline)
    pipe.set_progress_bar_config(disable=True)
    prompts = run.encoded_prompts(cfg)

    def generate(i: int, threshold: float):
        out = pipe(
            prompt=[prompts[i]], negative_prompt=cfg.negative_prompt, height=height,
            width=width, num_frames=frames, num_inference_steps=cfg.steps,
            guidance_scale=cfg.guidance_scale, guidance_rescale=cfg.guidance_rescale,
            fps=cfg.fps, aesthetic_score=cfg.aesthetic_score,
            generator=torch.Generator().manual_seed(cfg.seed + i), output_type="latent",
            step_cache_threshold=threshold,
        )  # fmt: skip
        return out.frames, out.step_cache_skipped

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    cal = calibrate(
        generate, len(prompts), cfg.steps, cfg.thresholds, cfg.max_rel_l2, sync=sync,
        log=lambda m: print(f"calibrate-cache: {m}", file=sys.stderr, flush=True),
    )  # fmt: skip
    from mugv_formats.atomic import atomic_write_text

    write_calibration(cal, cfg.out)
    atomic_write_text(
        cfg.out.with_name(cfg.out.stem + ".resolved.yaml"),
        yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False),
    )
    return cfg.out
