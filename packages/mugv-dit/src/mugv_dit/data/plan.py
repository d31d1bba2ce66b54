"""Latent-shard input for DiT training: random access, buckets, token-budget batches.

Every step draws ONE bucket (equal latent shape) and forms the step's global micro-batches
from it, so all DP ranks get the same number of tokens (balanced by construction). The plan
of a step is a pure function of (seed, step, sampler state), independent of the TP/DP
layout: a DP=2 run sees exactly the micro-batches a DP=1 run accumulates. The sampler state
(per-bucket epoch cursors) is tiny and goes into the training checkpoint.

Balanced sampling: when the samples' ``sample_weight`` (computed by mugv-data, carried by the
latent records) differ and ``data.weighted_sampling`` is on (the default), a step's bucket is
drawn with probability proportional to its eligible samples' summed weight and each sample
of a micro-batch with probability proportional to its weight (with replacement; draw ``c``
of a bucket from ``random.Random(f"{seed}:{bucket id}:{c}")``, still a pure function of the
cursor), so a sample's share of all draws is its weight over the total. Equal weights (all
1.0 when mugv-data assigned none) keep the epoch permutations above, draw for draw.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from mugv_formats import LatentDataset, LatentSample

from mugv_dit.config import StageConfig
from mugv_dit.diffusion.prepare import CleanBatch

BucketKey = tuple[int, int, int, int, int]  # latent T, H, W; pixel height, width


class LatentIndex:
    """The DiT's view of a latent-shard dataset: its records, their buckets and random access
    (``mugv_formats``' :meth:`LatentDataset.open_indexed`, which guards members and checks
    checksums). Refuses datasets the DiT cannot train on (raw latents, no text features)."""

    def __init__(self, path: str | Path, *, verify: bool = True):
        self.path = Path(path)
        self.dataset = LatentDataset(self.path)
        self.header = self.dataset.header
        self.verify = verify
        self.reader = self.dataset.open_indexed(verify=verify)
        self.records = self.reader.records
        if not self.header.latents_normalized:
            raise ValueError(
                f"{self.path / 'dataset.json'}: latents_normalized is false (raw VAE latents); "
                "the DiT trains on latents normalised with the VAE's statistics: re-encode with "
                "`mugv-vae encode`, which normalises them"
            )
        if not self.records:
            raise ValueError(f"latent dataset {self.path} has no samples")
        missing = [r.key for r in self.records if r.text_length is None]
        if missing or self.header.text_dim is None:
            raise ValueError(
                f"latent dataset {self.path}: {len(missing)} samples (e.g. {missing[:3]}) have no "
                "text features; run `mugv-dit embed-text` first"
            )

    def __len__(self) -> int:
        return len(self.records)

    def bucket_of(self, i: int) -> BucketKey:
        r = self.records[i]
        _, t, h, w = r.latent_shape
        return (t, h, w, r.height, r.width)

    def load(self, i: int | str) -> LatentSample:
        """Read, checksum and decode sample ``i`` (manifest index or key)."""
        return self.reader.load(i)


def tokens_of(bucket: BucketKey, patch: tuple[int, int, int]) -> int:
    """Video tokens of one sample of a bucket."""
    t, h, w = bucket[:3]
    return (t // patch[0]) * (h // patch[1]) * (w // patch[2])


def stage_accepts(stage: StageConfig, bucket: BucketKey, num_frames: int) -> bool:
    """Whether a sample of this bucket / pixel length belongs to a curriculum stage."""
    if stage.max_height is not None and bucket[3] > stage.max_height:
        return False
    if stage.max_frames is not None and num_frames > stage.max_frames:
        return False
    return not (stage.min_frames is not None and num_frames < stage.min_frames)


@dataclass
class StepPlan:
    """Global micro-batches (lists of sample indices) of one step, all from one bucket."""

    bucket: BucketKey
    micro_batches: list[list[int]]


class BucketSampler:
    """Deterministic bucketed, token-budget sampler with savable state."""

    def __init__(
        self,
        index: LatentIndex,
        *,
        tokens_per_batch: int,
        max_batch_size: int,
        micro_batches_per_step: int,
        patch: tuple[int, int, int],
        seed: int,
        weighted: bool = True,
    ):
        self.index = index
        self.tokens_per_batch = tokens_per_batch
        self.max_batch_size = max_batch_size
        self.micro_batches_per_step = micro_batches_per_step
        self.patch = patch
        self.seed = seed
        members: dict[BucketKey, list[int]] = defaultdict(list)
        for i in range(len(index)):
            members[index.bucket_of(i)].append(i)
        self.buckets = sorted(members)
        self.members = {b: members[b] for b in self.buckets}
        self.cursors: dict[int, int] = {}
        weights = [float(r.sample_weight) for r in index.records]
        #: per-sample draw weights, or None: uniform epochs (weighting off or weights equal)
        self.weights = weights if weighted and len(set(weights)) > 1 else None

    def batch_size(self, bucket: BucketKey) -> int:
        per = tokens_of(bucket, self.patch)
        return max(1, min(self.max_batch_size, self.tokens_per_batch // max(per, 1)))

    def eligible(self, stage: StageConfig, bucket: BucketKey) -> list[int]:
        """Indices of the samples of ``bucket`` that ``stage`` accepts."""
        return self._eligible(stage, bucket)

    def _eligible(self, stage: StageConfig, bucket: BucketKey) -> list[int]:
        recs = self.index.records
        return [i for i in self.members[bucket] if stage_accepts(stage, bucket, recs[i].num_frames)]

    def _draw(self, bucket_id: int, pool: list[int], n: int) -> list[int]:
        if self.weights is not None:
            return self._draw_weighted(bucket_id, pool, n)
        out = []
        cursor = self.cursors.get(bucket_id, 0)
        for _ in range(n):
            epoch, pos = divmod(cursor, len(pool))
            perm = list(pool)
            random.Random(self.seed * 7919 + bucket_id * 104729 + epoch).shuffle(perm)
            out.append(perm[pos])
            cursor += 1
        self.cursors[bucket_id] = cursor
        return out

    def _draw_weighted(self, bucket_id: int, pool: list[int], n: int) -> list[int]:
        """``n`` samples of ``pool`` drawn by ``sample_weight`` (with replacement); draw
        ``c`` (the bucket's cursor) from its own seeded generator."""
        cum = list(itertools.accumulate(self.weights[i] for i in pool))
        cursor = self.cursors.get(bucket_id, 0)
        out = [
            random.Random(f"{self.seed}:{bucket_id}:{c}").choices(pool, cum_weights=cum)[0]
            for c in range(cursor, cursor + n)
        ]
        self.cursors[bucket_id] = cursor + n
        return out

    def pool_weight(self, pool: list[int]) -> float:
        """A bucket's draw weight: its eligible samples' count, or summed ``sample_weight``."""
        return len(pool) if self.weights is None else sum(self.weights[i] for i in pool)

    def _choose(self, step: int, stage: StageConfig, progress: float) -> tuple[int, list[int]]:
        """(bucket id, eligible pool) of step ``step``: a pure function of (seed, step,
        stage, progress), the same on every rank. ``progress`` in [0, 1] anneals the image
        share from ``image_share_start`` to ``image_share_end``; within images / videos a
        bucket is drawn with probability proportional to its eligible samples."""
        rng = random.Random(self.seed * 1_000_003 + step)
        pools = {
            bid: pool
            for bid, b in enumerate(self.buckets)
            if (pool := self._eligible(stage, b)) and self.pool_weight(pool) > 0
        }
        if not pools:
            raise ValueError(
                f"curriculum stage {stage.name!r} accepts no sample"
                f"{' with a positive sample_weight' if self.weights is not None else ''} of "
                f"{self.index.path} "
                f"(max_height={stage.max_height}, frames in [{stage.min_frames}, {stage.max_frames}])"
            )
        ids = sorted(pools)
        if stage.image_share_start is not None:
            end = (
                stage.image_share_end
                if stage.image_share_end is not None
                else stage.image_share_start
            )
            share = stage.image_share_start + (end - stage.image_share_start) * progress
            images = [b for b in ids if self.buckets[b][0] == 1]
            videos = [b for b in ids if self.buckets[b][0] > 1]
            if images and videos:
                ids = images if rng.random() < share else videos
        weights = [self.pool_weight(pools[b]) for b in ids]
        bid = rng.choices(ids, weights=weights)[0]
        return bid, pools[bid]

    def choose_bucket(self, step: int, stage: StageConfig, progress: float) -> BucketKey:
        """The bucket every rank draws step ``step``'s micro-batches from."""
        return self.buckets[self._choose(step, stage, progress)[0]]

    def plan(self, step: int, stage: StageConfig, progress: float) -> StepPlan:
        """Plan step ``step`` of ``stage`` (``progress`` in [0, 1] anneals the image share)."""
        bid, pool = self._choose(step, stage, progress)
        bucket = self.buckets[bid]
        bs = self.batch_size(bucket)
        micro = [self._draw(bid, pool, bs) for _ in range(self.micro_batches_per_step)]
        return StepPlan(bucket, micro)

    def state_dict(self) -> dict:
        state = {
            "cursors": {str(k): v for k, v in self.cursors.items()},
            "buckets": len(self.buckets),
        }
        if self.weights is not None:  # the cursors count weighted draws, not epoch positions
            state["weighted"] = True
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("buckets") != len(self.buckets):
            raise ValueError(
                f"sampler state has {state.get('buckets')} buckets, dataset has {len(self.buckets)}: "
                "resume needs the same dataset"
            )
        weighted = bool(state.get("weighted", False))
        if weighted != (self.weights is not None):
            raise ValueError(
                f"sampler state was saved with weighted sampling {'on' if weighted else 'off'}, "
                f"this run draws {'by sample_weight' if self.weights is not None else 'uniformly'}"
                ": resume with the same data.weighted_sampling (and the same sample weights)"
            )
        self.cursors = {int(k): int(v) for k, v in state["cursors"].items()}


def collate(samples: list[LatentSample], device: torch.device | str = "cpu") -> CleanBatch:
    """Stack equal-shape samples into a CleanBatch (latents float32, text per sample)."""
    shapes = {tuple(s.latents.shape) for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"micro-batch mixes latent shapes {sorted(shapes)}")
    latents = torch.from_numpy(np.stack([s.latents.astype(np.float32) for s in samples]))
    texts = [torch.from_numpy(s.text.astype(np.float32)).to(device) for s in samples]
    fps = torch.tensor([s.record.fps for s in samples], dtype=torch.float32)
    r0 = samples[0].record
    return CleanBatch(
        latents.to(device),
        texts,
        fps.to(device),
        r0.height,
        r0.width,
        [s.record.key for s in samples],
    )
