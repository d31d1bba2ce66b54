"""Held-out validation: the flow loss of a latent set at fixed noise and fixed noise levels.

Every evaluation of the same weights sees the same inputs, so two of them agree exactly
(and any TP / PP / DP / CP layout agrees up to float reassociation):

* items: the first ``validation.max_samples`` samples of ``validation.path`` (manifest
  order), each at ``K = validation.noise_levels`` noise levels;
* level k of a sample: ``s_k = shift(sigmoid(mean + std * Phi^-1((k + 0.5) / K)), r)``, the
  K quantiles of the training logit-normal with the training resolution shift ``r``
  (:func:`validation_levels`; no shift when ``objective.shift_by_resolution`` is off);
* task of (sample j, level k): a single-frame sample is ``t2i``; a video cycles through the
  validation tasks, ``tasks[(j + k) % len(tasks)]``; continuation keeps the first
  ``1 + (j + k) % min(continuation_max_frames, T - 1)`` latent frames clean;
* noise of (sample, level): a float32 normal drawn on the CPU from
  :func:`item_seed` ``(validation.seed, key, k)``; captions are never dropped.

The loss of a group of items (overall, per task, per resolution bucket) is the summed
squared velocity error over noisy elements divided by their number, as the training loss.
Items are batched per bucket up to ``data.tokens_per_batch`` (``data.max_batch_size``), the
micro-batches dealt round-robin to DP ranks and run forward-only through the trainer's
schedule in eval mode (``CHUNK_MICRO_BATCHES`` per call, each sample read once); per-item sums are then added over the pipeline and DP ranks.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from dataclasses import dataclass

import torch

from mugv_dit.config import ObjectiveConfig, RunConfig, ValidationConfig
from mugv_dit.data.plan import BucketKey, LatentIndex, collate, tokens_of
from mugv_dit.diffusion.prepare import CleanBatch
from mugv_dit.diffusion.schedule import (
    add_noise,
    resolution_shift_ratio,
    shift_sigma,
    velocity_target,
)
from mugv_dit.model import PackedText

#: the loss of every item is kept as (summed squared error, noisy elements)
SSE, COUNT = 0, 1
#: micro-batches per forward-only schedule call (at least the pipeline depth): bounds the
#: device memory of the inputs held at once, whatever the size of the validation set
CHUNK_MICRO_BATCHES = 8


def validation_levels(k: int, mean: float, std: float) -> torch.Tensor:
    """The ``k`` quantiles ``(i + 0.5) / k`` of ``sigmoid(N(mean, std))``, float64 ``[k]``."""
    q = (torch.arange(k, dtype=torch.float64) + 0.5) / k
    return torch.sigmoid(mean + std * torch.special.ndtri(q))


def item_seed(seed: int, key: str, level: int) -> int:
    """Noise seed of sample ``key`` at level ``level``: the first 8 bytes (little-endian) of
    ``sha256(json.dumps([seed, key, level]))`` mod ``2^63 - 1``."""
    digest = hashlib.sha256(json.dumps([seed, key, level]).encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63 - 1)


def default_tasks(cfg: RunConfig) -> list[str]:
    """The tasks a run trains video samples on (positive ratio in the objective or a stage)."""
    ratios = [cfg.objective.task_ratios] + [s.task_ratios or {} for s in cfg.curriculum]
    used = {k for r in ratios for k, v in r.items() if v > 0}
    return [t for t in ("t2v", "i2v", "continuation") if t in used]


@dataclass(frozen=True)
class ValItem:
    """One evaluation: sample ``row`` of the set at noise level ``level`` under ``task``."""

    row: int
    key: str
    level: int
    task: str
    clean_frames: int  # leading latent frames kept clean (0: none)
    bucket: BucketKey


def bucket_name(bucket: BucketKey) -> str:
    """``T3_H4_W4_32x48``: latent T, H, W and the pixel height x width of a bucket."""
    t, h, w, ph, pw = bucket
    return f"T{t}_H{h}_W{w}_{ph}x{pw}"


def plan_items(index: LatentIndex, vcfg: ValidationConfig, objective: ObjectiveConfig,
               tasks: list[str]) -> list[ValItem]:  # fmt: skip
    """The validation items in their fixed order: bucket, then sample, then level."""
    if not tasks:
        raise ValueError("validation.tasks is empty: name at least one of t2v/i2v/continuation")
    items = []
    for j in range(min(vcfg.max_samples, len(index))):
        bucket = index.bucket_of(j)
        t = bucket[0]
        for k in range(vcfg.noise_levels):
            if t == 1:
                task, clean = "t2i", 0
            else:
                task = tasks[(j + k) % len(tasks)]
                clean = {
                    "t2v": 0,
                    "i2v": 1,
                    "continuation": 1 + (j + k) % min(objective.continuation_max_frames, t - 1),
                }[task]
            items.append(ValItem(j, index.records[j].key, k, task, clean, bucket))
    return sorted(items, key=lambda it: (it.bucket, it.row, it.level))


def micro_batches(items: list[ValItem], tokens_per_batch: int, max_batch_size: int,
                  patch: tuple[int, int, int]) -> list[list[int]]:  # fmt: skip
    """Item indices in micro-batches of one bucket each, at most the token budget (and
    ``max_batch_size``) per micro-batch, as the training sampler sizes them."""
    by_bucket: dict[BucketKey, list[int]] = defaultdict(list)
    for n, it in enumerate(items):
        by_bucket[it.bucket].append(n)
    out = []
    for bucket in sorted(by_bucket):
        per = tokens_of(bucket, patch)
        bs = max(1, min(max_batch_size, tokens_per_batch // max(per, 1)))
        ids = by_bucket[bucket]
        out.extend(ids[i : i + bs] for i in range(0, len(ids), bs))
    return out


@dataclass
class ValInputs:
    """Model inputs and targets of one validation micro-batch."""

    batch: CleanBatch
    noisy_BCTHW: torch.Tensor
    sigma_B: torch.Tensor
    target_BCTHW: torch.Tensor
    noisy_frames_BT: torch.Tensor


def item_inputs(batch: CleanBatch, items: list[ValItem], objective: ObjectiveConfig,
                levels: torch.Tensor, seed: int) -> ValInputs:  # fmt: skip
    """Fixed noise, noise level and frame mask of each item of a micro-batch (``batch`` holds
    the items' clean samples in order; ``levels`` the unshifted K levels)."""
    x0 = batch.latents_BCTHW
    b, _, t, _, _ = x0.shape
    sigma_B = levels[[it.level for it in items]]
    if objective.shift_by_resolution:
        ratio = resolution_shift_ratio(batch.height_px, batch.width_px, t, objective.base_resolution)
        sigma_B = shift_sigma(sigma_B, ratio)
    noise = torch.stack(
        [
            torch.randn(
                x0.shape[1:],
                generator=torch.Generator().manual_seed(item_seed(seed, it.key, it.level)),
                dtype=torch.float32,
            )
            for it in items
        ]
    ).to(x0.device, x0.dtype)
    noisy_frames_BT = torch.ones(b, t, dtype=torch.bool)
    for i, it in enumerate(items):
        noisy_frames_BT[i, : it.clean_frames] = False
    noisy = add_noise(x0, noise, sigma_B.to(x0.device))
    keep = noisy_frames_BT[:, None, :, None, None].to(x0.device)
    return ValInputs(
        batch,
        torch.where(keep, noisy, x0),
        sigma_B.float(),
        velocity_target(x0, noise),
        noisy_frames_BT,
    )


def per_sample_sse(pred_BCTHW: torch.Tensor, target_BCTHW: torch.Tensor,
                   noisy_frames_BT: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Summed squared velocity error over each sample's noisy frames, float64 ``[B]`` (the
    learned-sigma half of the prediction ignored), as the training loss sums it."""
    c = target_BCTHW.shape[1]
    err = (pred_BCTHW[:, :c].float() - target_BCTHW.float()).pow(2)
    weight = noisy_frames_BT[:, None, :, None, None].to(err.device, err.dtype)
    return (err * weight).sum(dim=(1, 2, 3, 4)).double()


def summarize(items: list[ValItem], sums: torch.Tensor) -> dict:
    """``{"loss", "loss_task/NAME", "loss_bucket/NAME", "items"}`` from per-item
    ``sums [N, 2]`` (summed squared error, noisy elements), in float64."""
    groups: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    sse = sums[:, SSE].tolist()
    count = sums[:, COUNT].tolist()
    for it, s, c in zip(items, sse, count):
        for name in ("loss", f"loss_task/{it.task}", f"loss_bucket/{bucket_name(it.bucket)}"):
            groups[name][0] += s
            groups[name][1] += c
    out = {name: s / max(1.0, c) for name, (s, c) in sorted(groups.items())}
    out["items"] = len(items)
    return out


class Validator:
    """The validation set of a run and its evaluation under the trainer's layout."""

    def __init__(self, cfg: RunConfig):
        vcfg = cfg.validation
        if vcfg.path is None:
            raise ValueError("validation.path is not set")
        self.cfg = cfg
        self.index = LatentIndex(vcfg.path)
        header = self.index.header
        if header.text_dim != cfg.model.text_dim or header.latent_channels != cfg.model.in_channels:
            raise ValueError(
                f"validation.path={vcfg.path}: text_dim={header.text_dim}, latent_channels="
                f"{header.latent_channels} do not fit the model (text_dim={cfg.model.text_dim}, "
                f"in_channels={cfg.model.in_channels})"
            )
        tasks = vcfg.tasks if vcfg.tasks is not None else default_tasks(cfg)
        self.items = plan_items(self.index, vcfg, cfg.objective, tasks)
        self.batches = micro_batches(
            self.items, cfg.data.tokens_per_batch, cfg.data.max_batch_size, cfg.model.patch_size
        )
        obj = cfg.objective
        self.levels = validation_levels(vcfg.noise_levels, obj.logit_normal_mean, obj.logit_normal_std)

    def _load(self, ids: list[int], device, cache: dict) -> ValInputs:
        """Inputs of one micro-batch; ``cache`` (row -> sample) holds the rows of the last
        chunk: a sample's levels are consecutive items, so each row is read once."""
        rows = [self.items[n].row for n in ids]
        for r in dict.fromkeys(rows):
            if r not in cache:
                cache[r] = self.index.load(r)
        batch = collate([cache[r] for r in rows], device)
        return item_inputs(
            batch, [self.items[n] for n in ids], self.cfg.objective, self.levels,
            self.cfg.validation.seed,
        )  # fmt: skip

    @torch.no_grad()
    def evaluate(self, trainer) -> dict:
        """The validation metrics of the trainer's current weights (collective: every rank
        calls it; the same dict everywhere). Runs the model in eval mode, restores the mode."""
        device = trainer.device
        mine = [mb for m, mb in enumerate(self.batches) if m % trainer.dp_size == trainer.dp_rank]
        sums = torch.zeros(len(self.items), 2, dtype=torch.float64, device=device)
        module = trainer.model.module
        was_training = module.training
        module.eval()
        try:
            # one forward-only schedule per latent shape (pipelined micro-batches share one)
            groups: dict[tuple, list[list[int]]] = defaultdict(list)
            for ids in mine:
                groups[(self.items[ids[0]].bucket, len(ids))].append(ids)
            # at most `chunk` micro-batches on the device at once (a pipeline stays filled)
            chunk = max(CHUNK_MICRO_BATCHES, trainer.pp_size)
            cache: dict = {}
            for _, group in sorted(groups.items()):
                for start in range(0, len(group), chunk):
                    part = group[start : start + chunk]
                    inputs = [self._load(ids, device, cache) for ids in part]
                    keep = {self.items[n].row for n in part[-1]}
                    cache = {r: v for r, v in cache.items() if r in keep}
                    shapes = [tuple(x.batch.latents_BCTHW.shape) for x in inputs]
                    outputs = trainer.schedule(_step_fn, inputs, shapes, forward_only=True)
                    # only the last pipeline stage has outputs: it alone fills its items' sums
                    for ids, x, out in zip(part, inputs, outputs):
                        _, c, _, h, w = x.batch.latents_BCTHW.shape
                        sums[ids, SSE] = out["sse_B"].to(device)
                        noisy = x.noisy_frames_BT.sum(1).double().to(device)
                        sums[ids, COUNT] = noisy * (c * h * w)
                    del inputs, outputs
            trainer.sum_over_step(sums)
        finally:
            module.train(was_training)
        result = summarize(self.items, sums.cpu())
        if not math.isfinite(result["loss"]):
            result["nonfinite"] = True
        return result


def _step_fn(model, x: ValInputs):
    """Megatron forward step of one validation micro-batch: per-sample errors as the loss
    dict (``sse_B``); the returned loss itself is unused (forward only)."""
    device = x.batch.latents_BCTHW.device
    noisy_BT = x.noisy_frames_BT.to(device)
    pred = model(
        x.noisy_BCTHW,
        x.sigma_B.to(device),
        PackedText.from_list(x.batch.texts),
        fps_B=x.batch.fps_B,
        noisy_frames_BT=noisy_BT,
        drop_caption_B=torch.zeros(noisy_BT.shape[0], dtype=torch.bool),
    )

    def loss_func(pred_BCTHW):
        sse_B = per_sample_sse(pred_BCTHW, x.target_BCTHW, noisy_BT)
        return sse_B.sum().float(), {"sse_B": sse_B}

    return pred, loss_func


class PlateauTracker:
    """``curriculum[i].advance_on_plateau``: per stage, the best validation loss and the
    validations since it improved by more than ``min_delta``. Its state is plain data
    (checkpointed with the trainer's counters)."""

    def __init__(self):
        self.stages: dict[str, dict] = {}  # stage name -> {"best": float, "bad": int}

    def update(self, stage, loss: float) -> dict:
        """Record a validation ``loss`` taken in ``stage`` (a StageConfig with
        ``advance_on_plateau``); return the decision ``{stage, loss, best, bad, patience,
        advance}`` (``advance``: end the stage now)."""
        rule = stage.advance_on_plateau
        st = self.stages.setdefault(stage.name, {"best": math.inf, "bad": 0})
        if loss < st["best"] - rule.min_delta:
            st["best"], st["bad"] = loss, 0
        else:
            st["bad"] += 1
        return {
            "stage": stage.name,
            "loss": loss,
            "best": st["best"],
            "bad": st["bad"],
            "patience": rule.patience,
            "min_delta": rule.min_delta,
            "advance": st["bad"] >= rule.patience,
        }

    def state_dict(self) -> dict:
        return {k: dict(v) for k, v in self.stages.items()}

    def load_state_dict(self, state: dict) -> None:
        self.stages = {
            str(k): {"best": float(v["best"]), "bad": int(v["bad"])} for k, v in state.items()
        }
