"""Precomputed reference errors: run the frozen reference once over every item of the
preference sets (one local process, TP=1) and store its per-sample velocity errors together
with the draws they were computed on and the dtype they were computed in.

The file is JSON (no code runs on read)::

    {"format": "mugv-align.reference-errors", "version": 2, "reference": PATH,
     "data_seed": S, "objective": {...}, "dtype": "bfloat16",
     "errors": {"chosen>rejected": [e_w, e_l], "key": [e]},
     "draw_seeds": {"chosen>rejected": seed, "key": seed}}

Each item is drawn once, at visit 0 (``seed = draw_seed(data_seed, item, 0)``, see
:mod:`mugv_align.data`), and the seed is stored: training with
``align.reference=precomputed`` passes ``draw_seeds`` back to
:func:`mugv_align.data.build_batch` as ``fixed_seeds``, so every visit of an item sees
exactly the noise, noise level, task and caption dropout the reference saw (live training
draws afresh per visit instead).

The reference runs in the dtype the policy trains in (:func:`policy_dtype`: bf16 on CUDA
with ``train.bf16``, else fp32) and with the run's ``runtime`` settings, so at step 0, with
the policy equal to the reference, ``e - e_ref`` is 0 up to the batch-size dependence of the
dtype's kernels (exactly 0 at one item per micro-batch). The dtype is recorded and a run in
another dtype refuses the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from mugv_dit.interop.export import build_model_from_export
from mugv_dit.megatron_patches.cuda_on_cpu import cpu_megatron
from mugv_dit.model import PackedText
from mugv_dit.optim.master import compute_dtype
from mugv_dit.parallel import default_device
from mugv_formats import atomic_write_text

from mugv_align.config import AlignRunConfig
from mugv_align.data import ItemVisit, build_batch, load_source
from mugv_align.losses import per_sample_velocity_error

FORMAT = "mugv-align.reference-errors"
VERSION = 2
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def policy_dtype(cfg: AlignRunConfig, device: torch.device) -> torch.dtype:
    """The dtype the policy's parameters and compute have on ``device``: mugv-dit's one
    rule (:func:`mugv_dit.optim.master.compute_dtype`, what ``Trainer.dtype`` is)."""
    return compute_dtype(cfg.train.bf16, device)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class ReferenceErrors:
    """A read reference-errors file: per-item errors (DPO ``[e_w, e_l]``, KTO ``[e]``), the
    draw seed each was computed on, and the compute dtype."""

    errors: dict[str, list[float]]
    draw_seeds: dict[str, int]
    dtype: torch.dtype


@torch.no_grad()
def precompute_reference_errors(
    cfg: AlignRunConfig, output: str | Path, *, device=None, dtype: torch.dtype | None = None
) -> int:
    """Write the reference errors of every item of ``cfg.align.preference`` (computed in
    ``dtype``, default :func:`policy_dtype` on ``device``); returns the number of items."""

    a = cfg.align
    if a.mode == "sft" or not a.preference:
        raise ValueError("precompute-ref needs align.mode dpo/kto and align.preference")
    ref_path = a.reference_from or cfg.train.init_from
    if ref_path is None:
        raise ValueError("precompute-ref needs align.reference_from or train.init_from")
    with cpu_megatron():
        device = torch.device(device) if device else default_device()
        dtype = policy_dtype(cfg, device) if dtype is None else dtype
        model = build_model_from_export(ref_path, dtype=dtype, runtime=cfg.runtime)
        model = model.to(device).eval()
        errors: dict[str, list[float]] = {}
        seeds: dict[str, int] = {}
        for s in a.preference:
            src = load_source(
                s.path, kind=a.mode, text_dim=cfg.model.text_dim, channels=cfg.model.in_channels
            )
            for n in range(len(src.items)):
                b = build_batch(src, [ItemVisit(n, 0)], cfg.objective, cfg.data.seed, device)
                pred = model(  # the inputs the trainer gives the policy (AlignTrainer._forward)
                    b.noisy_BCTHW,
                    b.sigma_B.to(device),
                    PackedText.from_list(b.texts),
                    fps_B=b.fps_B,
                    noisy_frames_BT=b.noisy_frames_BT,
                    drop_caption_B=b.drop_caption_B,
                )
                e = per_sample_velocity_error(pred, b.target_BCTHW, b.noisy_frames_BT)
                errors[b.ids[0]] = [float(x) for x in e.cpu()]
                seeds[b.ids[0]] = b.seeds[0]
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "reference": str(ref_path),
        "data_seed": cfg.data.seed,
        "objective": cfg.objective.model_dump(mode="json"),
        "dtype": dtype_name(dtype),
        "errors": errors,
        "draw_seeds": seeds,
    }
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, json.dumps(doc))
    return len(errors)


def read_reference_errors(
    path: str | Path, *, data_seed: int, objective: dict, dtype: torch.dtype
) -> ReferenceErrors:
    """Reference errors written by :func:`precompute_reference_errors`, checked against the
    run: same ``data.seed`` and objective (the draws), same compute ``dtype`` (the policy's),
    a stored draw seed for every item."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"align.reference_errors={path} does not exist")
    try:
        doc = json.loads(path.read_text())
        if doc.get("format") != FORMAT:
            raise ValueError(f"format {doc.get('format')!r} is not {FORMAT!r}")
        if doc.get("version") != VERSION:
            raise ValueError(
                f"version {doc.get('version')!r} (this mugv-align reads {VERSION}: "
                "rerun `mugv-align precompute-ref`)"
            )
        errors = {str(k): [float(x) for x in v] for k, v in doc["errors"].items()}
        seeds = {str(k): int(v) for k, v in doc["draw_seeds"].items()}
        stored = _DTYPES[doc["dtype"]]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a reference-errors file ({e})") from None
    if doc.get("data_seed") != data_seed or doc.get("objective") != objective:
        raise ValueError(
            f"{path} was computed with another data.seed / objective: its noise would not match"
        )
    if stored != dtype:
        raise ValueError(
            f"{path} was computed in {dtype_name(stored)}, the policy trains in "
            f"{dtype_name(dtype)}: rerun `mugv-align precompute-ref` on the training device"
        )
    missing = sorted(set(errors) - set(seeds))
    if missing:
        raise ValueError(f"{path}: no draw seed stored for {missing[0]}")
    return ReferenceErrors(errors, seeds, stored)
