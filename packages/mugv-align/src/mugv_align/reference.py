"""Precomputed reference errors: run the frozen reference once over every item of the
preference sets (one local process, TP=1) and store its per-sample velocity errors.

The file is JSON (no code runs on read)::

    {"format": "mugv-align.reference-errors", "version": 1, "reference": PATH,
     "data_seed": S, "objective": {...}, "errors": {"chosen>rejected": [e_w, e_l], "key": [e]}}

Each item's noise, noise level, task and caption dropout come from its per-item seed
(:func:`mugv_align.data.item_seed` of ``data.seed`` and the item), so training with
``align.reference=precomputed`` sees the same inputs the reference saw here.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from mugv_dit.interop.export import build_model_from_export
from mugv_dit.megatron_patches.cuda_on_cpu import cpu_megatron
from mugv_dit.model import PackedText
from mugv_dit.parallel import default_device
from mugv_formats import atomic_write_text

from mugv_align.config import AlignRunConfig
from mugv_align.data import build_batch, load_source
from mugv_align.losses import per_sample_velocity_error

FORMAT = "mugv-align.reference-errors"


@torch.no_grad()
def precompute_reference_errors(cfg: AlignRunConfig, output: str | Path, *, device=None) -> int:
    """Write the reference errors of every item of ``cfg.align.preference``; returns the
    number of items."""

    a = cfg.align
    if a.mode == "sft" or not a.preference:
        raise ValueError("precompute-ref needs align.mode dpo/kto and align.preference")
    ref_path = a.reference_from or cfg.train.init_from
    if ref_path is None:
        raise ValueError("precompute-ref needs align.reference_from or train.init_from")
    with cpu_megatron():
        device = torch.device(device) if device else default_device()
        model = build_model_from_export(ref_path).to(device).eval()
        errors: dict[str, list[float]] = {}
        for s in a.preference:
            src = load_source(
                s.path, kind=a.mode, text_dim=cfg.model.text_dim, channels=cfg.model.in_channels
            )
            for n in range(len(src.items)):
                b = build_batch(src, [n], cfg.objective, cfg.data.seed, device)
                pred = model(
                    b.noisy_BCTHW,
                    b.sigma_B.to(device),
                    PackedText.from_list(b.texts),
                    fps_B=b.fps_B,
                    noisy_frames_BT=b.noisy_frames_BT,
                    drop_caption_B=b.drop_caption_B,
                )
                e = per_sample_velocity_error(pred, b.target_BCTHW, b.noisy_frames_BT)
                errors[b.ids[0]] = [float(x) for x in e.cpu()]
    doc = {
        "format": FORMAT,
        "version": 1,
        "reference": str(ref_path),
        "data_seed": cfg.data.seed,
        "objective": cfg.objective.model_dump(mode="json"),
        "errors": errors,
    }
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, json.dumps(doc))
    return len(errors)
