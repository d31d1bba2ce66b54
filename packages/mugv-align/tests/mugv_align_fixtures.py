"""Tiny synthetic data for the mugv-align tests (written with mugv_formats).

The task: for prompt i, the "good" latent is ``+u + 0.3 n_i`` and the "bad" one
``-u + 0.3 n'_i`` for a fixed direction ``u``: the preferred direction is known.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml
from mugv_formats import LatentRecord, LatentShardWriter

CHANNELS = 4
TEXT_DIM = 32


def make_task_latents(
    path: Path, *, prompts: int, seed: int = 0, start: int = 0, weights: dict | None = None
) -> Path:
    """``weights``: sample key -> its ``sample_weight`` (default 1.0)."""
    rng = np.random.default_rng(seed)
    u = np.random.default_rng(1234).standard_normal((CHANNELS, 1, 4, 4)).astype(np.float32)
    header = LatentShardWriter.make_header(
        producer="mugv-align-tests 0",
        vae_checkpoint_id="test-vae",
        latent_channels=CHANNELS,
        latent_mean=[0.0] * CHANNELS,
        latent_std=[1.0] * CHANNELS,
        text_encoder_id="test-t5",
        text_dim=TEXT_DIM,
        max_text_len=16,
    )
    with LatentShardWriter(path, header, samples_per_shard=8, energon=False) as writer:
        for i in range(start, start + prompts):
            text = rng.standard_normal((3, TEXT_DIM)).astype(np.float32)
            for name, sign in (("good", 1.0), ("bad", -1.0)):
                lat = (sign * u + 0.3 * rng.standard_normal(u.shape)).astype(np.float32)
                rec = LatentRecord(
                    key=f"{name}-{i:03d}",
                    caption=f"prompt {i}",
                    fps=24.0,
                    num_frames=1,
                    height=32,
                    width=32,
                    sample_weight=(weights or {}).get(f"{name}-{i:03d}", 1.0),
                )
                writer.write(rec, lat, text)
    return path


def write_labels(path: Path, prompts: range, kind: str) -> Path:
    rows = []
    for i in prompts:
        if kind == "dpo":
            rows.append({"chosen": f"good-{i:03d}", "rejected": f"bad-{i:03d}"})
        else:
            rows.append({"key": f"good-{i:03d}", "label": "pass"})
            rows.append({"key": f"bad-{i:03d}", "label": "fail"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def model_overrides() -> dict:
    return {"text_dim": TEXT_DIM, "in_channels": CHANNELS, "hidden_size": 24, "num_heads": 2}


def make_export(path: Path, seed: int = 0) -> Path:
    """A random-initialised tiny model as a mugv.dit-export (the reference / start point)."""
    from mugv_dit import build_model
    from mugv_dit.config import model_preset
    from mugv_dit.interop.export import full_state_dict, save_export

    cfg = model_preset("debug", **model_overrides())
    torch.manual_seed(seed)
    model = build_model(cfg)
    save_export(path, cfg, full_state_dict(model))
    return path


def write_config(
    path: Path,
    out: Path,
    *,
    align: dict,
    steps: int,
    lr: float = 1e-3,
    train: dict | None = None,
    data: dict | None = None,
    **extra,
) -> Path:
    raw = {
        "preset": "debug",
        "model": model_overrides(),
        "objective": {"task_ratios": {"t2v": 1.0}, "caption_dropout": 0.0},
        "data": {"seed": 7, "tokens_per_batch": 64, **(data or {})},
        "train": {"progress": False, "seed": 3, **(train or {})},
        "curriculum": [{"name": "main", "steps": steps, "lr": lr}],
        "output_dir": str(out),
        "align": align,
        **extra,
    }
    path.write_text(yaml.safe_dump(raw))
    return path
