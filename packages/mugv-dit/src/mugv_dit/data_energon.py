"""Latent shards through megatron-energon (Megatron's multimodal loader), savable state.

The dataset directory carries ``.nv-meta`` (written by mugv_formats, ``CrudeWebdataset``);
a cooker turns energon's decoded members into samples, ``batch_group_criterion`` buckets
them by latent shape with a token-budget batch size, and each DP rank reads its own part of
the stream (``WorkerConfig(rank=dp_rank, ...)``; TP ranks of one DP rank read the same).
The loader state is saved per rank next to the training checkpoint and restored exactly.

Differences from the default ``plan`` loader: DP ranks draw their own buckets (token budgets
keep them balanced, not equal), runs are reproducible for one layout only, and curriculum
image-share annealing is not applied (stage length/height filters are).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from megatron.energon import (
    Cooker,
    DefaultTaskEncoder,
    Sample,
    SkipSample,
    WorkerConfig,
    basic_sample_keys,
    get_savable_loader,
    get_train_dataset,
)
from megatron.energon.edataclass import edataclass
from megatron.energon.task_encoder.base import stateless

from mugv_dit.config import StageConfig
from mugv_dit.data import stage_accepts, tokens_of
from mugv_dit.diffusion.prepare import CleanBatch


@edataclass
class LatentShardSample(Sample):
    """One latent-shard sample as energon delivers it."""

    record: dict
    latents: np.ndarray
    text: np.ndarray


@stateless
def cook_latent_sample(raw: dict) -> LatentShardSample:
    """Crude sample (members decoded by energon: npy -> array, json -> dict) -> sample."""
    if "text.npy" not in raw:
        raise ValueError(
            f"sample {raw.get('__key__')}: no text features; run `mugv-dit embed-text`"
        )
    return LatentShardSample(
        **basic_sample_keys(raw),
        record=raw["json"],
        latents=raw["latents.npy"],
        text=raw["text.npy"],
    )


class LatentTaskEncoder(DefaultTaskEncoder):
    """Buckets by (latent shape, pixel size); batch size from the token budget."""

    cookers = (Cooker(cook_latent_sample),)

    def __init__(self, stage: StageConfig, tokens_per_batch: int, max_batch_size: int, patch):
        super().__init__()
        self.stage = stage
        self.tokens_per_batch = tokens_per_batch
        self.max_batch_size = max_batch_size
        self.patch = tuple(patch)

    def _bucket(self, sample: LatentShardSample):
        _, t, h, w = sample.latents.shape
        rec = sample.record
        return (t, h, w, int(rec["height"]), int(rec["width"]))

    @stateless
    def encode_sample(self, sample: LatentShardSample) -> LatentShardSample:
        # stage filter here: energon's grouping step must never skip a sample
        if not stage_accepts(self.stage, self._bucket(sample), int(sample.record["num_frames"])):
            raise SkipSample()
        return sample

    def batch_group_criterion(self, sample: LatentShardSample):
        bucket = self._bucket(sample)
        per = tokens_of(bucket, self.patch)
        return bucket, max(1, min(self.max_batch_size, self.tokens_per_batch // max(per, 1)))

    def batch(self, samples: list[LatentShardSample]) -> list[LatentShardSample]:
        return samples


def to_clean_batch(samples: list[LatentShardSample], device) -> CleanBatch:
    shapes = {tuple(s.latents.shape) for s in samples}
    if len(shapes) != 1:
        raise ValueError(
            f"energon batch mixes latent shapes {sorted(shapes)} ({[s.__key__ for s in samples]})"
        )
    latents = torch.from_numpy(np.stack([s.latents.astype(np.float32) for s in samples]))
    texts = [torch.from_numpy(np.asarray(s.text, dtype=np.float32)).to(device) for s in samples]
    fps = torch.tensor([float(s.record["fps"]) for s in samples], dtype=torch.float32)
    r0 = samples[0].record
    return CleanBatch(
        latents.to(device),
        texts,
        fps.to(device),
        int(r0["height"]),
        int(r0["width"]),
        [s.__key__ for s in samples],
    )


class EnergonLatentLoader:
    """Per-stage energon loaders for one DP rank, with savable state."""

    def __init__(
        self,
        path,
        *,
        dp_rank,
        dp_size,
        dp_group,
        tokens_per_batch,
        max_batch_size,
        patch,
        num_workers: int = 0,
        seed: int = 0,
    ):
        self.path = str(path)
        self.kw = dict(
            tokens_per_batch=tokens_per_batch, max_batch_size=max_batch_size, patch=patch
        )
        self.worker_config = WorkerConfig(
            rank=dp_rank,
            world_size=dp_size,
            num_workers=num_workers,
            data_parallel_group=dp_group,
            seed_offset=seed,
        )
        self.stage_idx: int | None = None
        self.loader = None
        self.iter = None
        self._pending_state = None

    def _open(self, stage_idx: int, stage: StageConfig) -> None:
        ds = get_train_dataset(
            self.path,
            worker_config=self.worker_config,
            batch_size=None,
            shuffle_buffer_size=64,
            max_samples_per_sequence=16,
            task_encoder=LatentTaskEncoder(stage, **self.kw),
        )
        self.loader = get_savable_loader(ds)
        if self._pending_state is not None and self._pending_state["stage"] == stage_idx:
            self.loader.restore_state_rank(self._pending_state["loader"])
        self._pending_state = None
        self.stage_idx = stage_idx
        self.iter = iter(self.loader)

    def next_batches(self, stage_idx: int, stage: StageConfig, n: int, device) -> list[CleanBatch]:
        if stage_idx != self.stage_idx:
            self._open(stage_idx, stage)
        return [to_clean_batch(next(self.iter), device) for _ in range(n)]

    def save(self, path: Path) -> None:
        state = None if self.loader is None else self.loader.save_state_rank()
        torch.save({"stage": self.stage_idx, "loader": state}, path)

    def restore(self, path: Path) -> None:
        if not path.is_file():
            raise ValueError(f"{path}: energon loader state missing (resume needs the same layout)")
        state = torch.load(path, weights_only=False)
        if state["loader"] is not None:
            self._pending_state = state
