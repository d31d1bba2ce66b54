"""``mugv-infer calibrate-fp8``: the float8 layer choice of :mod:`mugv_infer.fp8_calibration`
run on real parts (model, VAE, T5) over the given prompts. The DiT is quantized once with the
bf16 linears kept beside the float8 ones (both on the device: the calibration needs the
memory of bf16 + float8 weights); the DiT inputs of 2 steps of the first prompt's bf16
generation are replayed per cell; the final latents of all prompts (pooled) are the measure.
Writes the calibration JSON (``--out``, default ``fp8_calibration.json``) and the resolved
settings beside it; ``generate --set runtime.fp8_calibration=FILE`` (with ``quantization:
fp8`` and the same ``fp8_mode``) then keeps its layers in bf16. Calibrate at the size and
step count you generate at, or smaller (it is the final latent's deviation that is bounded)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml
from pydantic import Field

from mugv_infer.config import GenerateConfig
from mugv_infer.fp8_calibration import FORMAT

DEFAULT_BUDGET = 0.03


class CalibrateFp8Config(GenerateConfig):
    """``mugv-infer calibrate-fp8`` (the generation settings, plus the budget)."""

    max_rel_l2: float = Field(
        DEFAULT_BUDGET, gt=0, le=10, description="Allowed final-latent deviation from bf16."
    )
    max_rounds: int = Field(4, ge=1, le=64, description="Verification generations at most.")
    out: Path = Field(Path("fp8_calibration.json"), description="The JSON written.")


def check_out(cfg: CalibrateFp8Config) -> None:
    """Before any model loads: a .json, not someone else's file, not replaced silently."""
    from mugv_infer.calibrate_command import check_json_out

    check_json_out(cfg.out, "calibrate-fp8", "format", FORMAT, cfg.overwrite)


def run_fp8_calibration(cfg: CalibrateFp8Config) -> Path:
    from mugv_formats.atomic import atomic_write_text

    from mugv_infer import run
    from mugv_infer.fp8_calibration import (
        LayerSwitch,
        calibrate_fp8,
        capture_dit_calls,
        kind_weight,
        make_cells,
        replay,
    )
    from mugv_infer.pipeline import MUGVPipeline
    from mugv_infer.quantize import load_time_probes, quantize_fp8
    from mugv_infer.sizes import check_frames, check_size, frame_size, num_frames

    check_out(cfg)
    run.check_parts(cfg.model, cfg.vae, cfg.text_encoder)
    if cfg.text_encoder is None:
        raise ValueError("calibrate-fp8 needs --text-encoder (a local T5 folder)")
    height, width = frame_size(cfg.resolution, cfg.aspect_ratio)
    check_size(height, width)
    frames = num_frames(cfg.frames)
    check_frames(frames)
    rt = cfg.runtime
    device = run._device(rt.device)
    dtype = torch.bfloat16 if rt.dtype == "bfloat16" else torch.float32
    plan = run.Plan(height, width, frames, device, dtype)
    # built in bf16, eager, resident: the float8 layers are made here with the bf16 kept
    plain = rt.model_copy(
        update={"quantization": "none", "compile": False, "graphed_step": False,
                "low_memory": False, "cpu_offload": False, "step_cache_threshold": 0.0,
                "step_cache_calibration": None}
    )  # fmt: skip
    pipe, _groups = run._build(cfg.model_copy(update={"runtime": plain}), plan, MUGVPipeline)
    pipe.set_progress_bar_config(disable=True)
    prompts = run.encoded_prompts(cfg)
    model = pipe.transformer
    originals: dict = {}
    report = quantize_fp8(
        model, backend=rt.fp8_backend, device=device, tolerance=rt.fp8_tolerance,
        probes=load_time_probes(model, device), mode=rt.fp8_mode, keep=list(rt.fp8_keep_bf16),
        keep_originals=originals,
    )  # fmt: skip
    switch = LayerSwitch(model, originals)
    switch.use(set())

    def one(i: int) -> torch.Tensor:
        out = pipe(
            prompt=[prompts[i]], negative_prompt=cfg.negative_prompt, height=height,
            width=width, num_frames=frames, num_inference_steps=cfg.steps,
            guidance_scale=cfg.guidance_scale, guidance_rescale=cfg.guidance_rescale,
            fps=cfg.fps, aesthetic_score=cfg.aesthetic_score,
            generator=torch.Generator().manual_seed(cfg.seed + i), output_type="latent",
        )  # fmt: skip
        return out.frames.float().cpu().flatten()

    finals: dict = {}
    calls = capture_dit_calls(model, lambda: finals.setdefault("first", one(0)), {0, cfg.steps // 2})
    # the pooled bf16 finals (the first prompt's from the captured run)
    finals[frozenset()] = torch.cat([finals.pop("first"), *(one(i) for i in range(1, len(prompts)))])

    def velocity(names):
        switch.use(names)
        return replay(model, calls)

    def final(names):
        key = frozenset(names)
        if key not in finals:
            switch.use(names)
            finals[key] = torch.cat([one(i) for i in range(len(prompts))])
        return finals[key]

    cfg_m = model.config
    cells = make_cells(cfg_m.num_layers)
    ffn = cfg_m.ffn_hidden_size or 4 * cfg_m.hidden_size
    benefits = [kind_weight(c.kind, cfg_m.hidden_size, ffn, rt.fp8_mode) * len(c.blocks)
                for c in cells]  # fmt: skip
    cal = calibrate_fp8(
        switch, cells, benefits, velocity, final, cfg.max_rel_l2, mode=rt.fp8_mode,
        max_rounds=cfg.max_rounds,
        log=lambda m: print(f"calibrate-fp8: {m}", file=sys.stderr, flush=True),
    )  # fmt: skip
    # what the load-time check or fp8_keep_bf16 kept stays kept when the file is used
    cal.keep_bf16 = sorted(set(cal.keep_bf16) | {c.name for c in report.kept})
    cal.write(cfg.out)
    atomic_write_text(
        cfg.out.with_name(cfg.out.stem + ".resolved.yaml"),
        yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False),
    )
    return cfg.out
