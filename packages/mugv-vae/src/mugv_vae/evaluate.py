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
        from mugv_vae.train.lpips import LPIPS, lpips_distance

        lpips = LPIPS.from_file(cfg.lpips_weights).to(device)
    else:
        warnings.warn("LPIPS skipped: no local LPIPS weights given", stacklevel=2)
    source = ClipSource(cfg.clips)
    rows = []
    start = time.perf_counter()
    for i, key in enumerate(source.keys):
        x = source.load(i, cfg.frames, [size]).unsqueeze(0).to(device)
        with torch.no_grad():
            y = model.decode(model.encode(x), window=cfg.window).clamp(-1, 1)
            row = {"clip": key, "frames": x.shape[2], "psnr": float(psnr(y, x))}
            row["ssim"] = float(ssim(y, x))
            if lpips is not None:
                row["lpips"] = float(lpips_distance(lpips, y.float(), x.float()))
        rows.append(row)
    metrics = [m for m in ("psnr", "ssim", "lpips") if all(m in r for r in rows)]
    mean = {m: sum(r[m] for r in rows) / len(rows) for m in metrics}
    header = "| clip | frames | " + " | ".join(m.upper() for m in metrics) + " |"
    lines = [header, "|" + "---|" * (2 + len(metrics))]
    for r in rows:
        lines.append(
            f"| {r['clip']} | {r['frames']} | " + " | ".join(f"{r[m]:.4f}" for m in metrics) + " |"
        )
    lines.append("| **mean** | | " + " | ".join(f"**{mean[m]:.4f}**" for m in metrics) + " |")
    result = {
        "clip_set": str(cfg.clips),
        "resolution": cfg.resolution,
        "frames": cfg.frames,
        "window": cfg.window,
        "checkpoint_id": checkpoint_id(cfg.checkpoint),
        "mean": mean,
        "clips": rows,
        "seconds": round(time.perf_counter() - start, 3),
        "table": "\n".join(lines),
    }
    if cfg.output:
        atomic_write_text(Path(cfg.output), json.dumps(result, indent=2))
    return result
