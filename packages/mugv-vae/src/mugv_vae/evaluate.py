"""``mugv-vae eval``: reconstruction quality (PSNR / SSIM / LPIPS) on a named clip set.

Each clip is cut to ``frames`` (1+8k), resized/cropped to ``resolution``, encoded (posterior
mean) and decoded with decoder window ``window``. Results: a Markdown table (printed) and a
JSON file with per-clip rows, the clip set, resolution, frame count and checkpoint id.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from mugv_vae.metrics import psnr, ssim
from mugv_vae.video import parse_resolution


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint: str
    clips: str = Field(description="Clip-shard dataset or folder of videos (the named set).")
    resolution: str = "256x256"
    frames: int = 17
    window: int = 8
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    lpips_weights: str | None = None
    output: str | None = Field(None, description="JSON results file.")


def load_lpips(path: str | Path | None, device: torch.device | str = "cpu"):
    """The LPIPS network from a local weights file, or None when no path is given. A path
    that does not exist is an error naming it (nothing is downloaded)."""
    if path is None:
        return None
    from mugv_vae.train.lpips import LPIPS

    return LPIPS.from_file(path).to(device)


def evaluate_model(
    model,
    source,
    size: tuple[int, int],
    frames: int,
    window: int,
    lpips=None,
    *,
    autocast_dtype: torch.dtype | None = None,
    max_clips: int | None = None,
) -> dict:
    """Reconstruct each clip of ``source`` (a :class:`~mugv_vae.train.data.ClipSource`) at
    ``size``: ``{"clips": rows, "mean": {...}, "seconds": ..., "decode_seconds": ...}``.

    Protocol: the first ``frames`` frames (the largest 1+8k available), resized so that the
    frame covers ``size`` (antialiased bilinear) and centre-cropped; encoded to the posterior
    mean, decoded with decoder window ``window``, clamped to [-1, 1]; PSNR / SSIM / LPIPS on
    [0, 1] per frame, averaged over frames, then over clips. ``decode_seconds`` counts the
    model's encode + decode only (loading and resizing excluded): the throughput's time."""
    device = next(model.parameters()).device
    rows, model_s = [], 0.0
    start = time.perf_counter()
    n = len(source) if max_clips is None else min(len(source), max_clips)
    for i in range(n):
        x = source.load(i, frames, [size]).unsqueeze(0).to(device)
        with torch.no_grad():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                enabled=autocast_dtype is not None):  # fmt: skip
                y = model.decode(model.encode(x), window=window)
            y = y.float().clamp(-1, 1)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            clip_s = time.perf_counter() - t0
            model_s += clip_s
            row = {"clip": source.keys[i], "frames": x.shape[2], "psnr": float(psnr(y, x))}
            row["model_seconds"] = round(clip_s, 4)
            row["ssim"] = float(ssim(y, x))
            if lpips is not None:
                from mugv_vae.train.lpips import lpips_distance

                row["lpips"] = float(lpips_distance(lpips, y, x.float()))
        rows.append(row)
    metrics = [m for m in ("psnr", "ssim", "lpips") if rows and all(m in r for r in rows)]
    return {
        "clips": rows,
        "mean": {m: sum(r[m] for r in rows) / len(rows) for m in metrics},
        "seconds": round(time.perf_counter() - start, 3),
        "model_seconds": round(model_s, 4),
    }


def markdown_table(rows: list[dict], mean: dict[str, float]) -> str:
    """Per-clip rows and the mean as a Markdown table."""
    metrics = list(mean)
    header = "| clip | frames | " + " | ".join(m.upper() for m in metrics) + " |"
    lines = [header, "|" + "---|" * (2 + len(metrics))]
    for r in rows:
        lines.append(
            f"| {r['clip']} | {r['frames']} | " + " | ".join(f"{r[m]:.4f}" for m in metrics) + " |"
        )
    lines.append("| **mean** | | " + " | ".join(f"**{mean[m]:.4f}**" for m in metrics) + " |")
    return "\n".join(lines)


def run_eval(cfg: EvalConfig) -> dict:
    from mugv_formats import atomic_write_text

    from mugv_vae.checkpoint import checkpoint_id
    from mugv_vae.model import MUGVAE
    from mugv_vae.train.data import ClipSource

    size = parse_resolution(cfg.resolution)
    device = torch.device(cfg.device)
    model = MUGVAE.from_pretrained(cfg.checkpoint, device=device)
    lpips = None
    if cfg.lpips_weights and Path(cfg.lpips_weights).is_file():
        lpips = load_lpips(cfg.lpips_weights, device)
    else:
        warnings.warn("LPIPS skipped: no local LPIPS weights given", stacklevel=2)
    out = evaluate_model(model, ClipSource(cfg.clips), size, cfg.frames, cfg.window, lpips)
    result = {
        "clip_set": str(cfg.clips),
        "resolution": cfg.resolution,
        "frames": cfg.frames,
        "window": cfg.window,
        "checkpoint_id": checkpoint_id(cfg.checkpoint),
        "mean": out["mean"],
        "clips": out["clips"],
        "seconds": out["seconds"],
        "table": markdown_table(out["clips"], out["mean"]),
    }
    if cfg.output:
        atomic_write_text(Path(cfg.output), json.dumps(result, indent=2))
    return result
