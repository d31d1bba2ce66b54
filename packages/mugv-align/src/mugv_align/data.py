"""Preference batches: sources, a layout-independent step sampler, per-visit noise.

Every visit of an item (a DPO pair or a KTO sample) draws its task, frame mask, noise level,
noise and caption dropout from its own seed, a pure function of (data seed, item identity,
visit)::

    seed = draw_seed(data_seed, item_id, visit)   (sha256 of the three, see there)

where ``visit`` counts the item's earlier visits (the epoch of its (source, bucket) pool in
:class:`PreferenceSampler`). So every epoch sees fresh noise, a resumed run draws exactly
what the uninterrupted run would, and any TP / DP / accumulation layout forms the same
micro-batches (as mugv-dit's BucketSampler does for pre-training). A pair's winner and loser
share all of the draw.

Balanced sampling (``data.weighted_sampling``, on by default): when the items' draw weights
differ within a source -- a DPO pair's is its chosen sample's ``sample_weight`` (the curated
clip mugv-data weighted; a generated loser carries the default 1.0), a KTO sample's its own --
a step's bucket is drawn by its items' summed weight and each item by its weight (with
replacement; draw ``c`` of a (source, bucket) pool from ``random.Random(f"{seed}:{source}:
{bucket}:{c}")``), so an item's share of its source's draws is its weight over the source's
total; ``visit`` is then ``c``, the pool's draw count (every draw its own noise). Equal
weights keep the epochs above, draw for draw.

Precomputed reference errors (:mod:`mugv_align.reference`) are the one place that needs
fixed draws: they are computed at visit 0 and the file stores each item's draw seed, which
training with ``align.reference=precomputed`` passes back as ``fixed_seeds`` on every visit.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from mugv_dit.config import ObjectiveConfig
from mugv_dit.data.plan import LatentIndex, collate
from mugv_dit.diffusion.schedule import (
    add_noise,
    resolution_shift_ratio,
    sample_logit_normal,
    shift_sigma,
    velocity_target,
)
from mugv_dit.diffusion.tasks import choose_task, frame_mask
from mugv_formats import KTOSample, PreferencePair, read_preference_data


def item_id(item: PreferencePair | KTOSample) -> str:
    """Identity of an item: ``chosen>rejected`` (pair) or the sample key."""
    return f"{item.chosen}>{item.rejected}" if isinstance(item, PreferencePair) else item.key


def item_seed(data_seed: int, ident: str) -> int:
    """``int(sha256(f"{data_seed}:{ident}")[:8], little-endian) mod (2^63 - 1)``."""
    digest = hashlib.sha256(f"{data_seed}:{ident}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63 - 1)


def draw_seed(data_seed: int, ident: str, visit: int) -> int:
    """Seed of the ``visit``-th (0-based) draw of item ``ident``, a pure function of the
    three: ``item_seed(data_seed, ident)`` at visit 0 (the draw before per-visit seeds, kept
    so a first epoch is unchanged), else the first 8 bytes (little-endian) of
    ``sha256(json.dumps([data_seed, ident, visit]))`` mod ``2^63 - 1`` (an unambiguous
    encoding: no two (item, visit) share a seed string)."""
    if visit < 0:
        raise ValueError(f"visit={visit} of {ident} must be >= 0")
    if visit == 0:
        return item_seed(data_seed, ident)
    digest = hashlib.sha256(json.dumps([data_seed, ident, visit]).encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63 - 1)


class ItemVisit(NamedTuple):
    """One planned visit: item ``index`` of its source, seen for the ``visit``-th time."""

    index: int
    visit: int


def resolve_latent_path(pref_path: Path, latent_dataset: str) -> Path:
    p = Path(latent_dataset)
    return p if p.is_absolute() else (pref_path / p)


@dataclass
class Source:
    """One preference set with the latent samples its keys name."""

    path: Path
    kind: str
    items: list
    index: LatentIndex
    key_to_row: dict[str, int]
    buckets: dict[tuple, list[int]]  # bucket -> item indices
    #: per item: the chosen (DPO) / only (KTO) latent sample's ``sample_weight``
    draw_weights: list[float] | None = None


def load_source(path: str | Path, *, kind: str, text_dim: int, channels: int) -> Source:
    path = Path(path)
    if not (path / "dataset.json").is_file():
        raise ValueError(f"preference set {path} does not exist (no dataset.json)")
    header, items = read_preference_data(path)
    if header.kind != kind:
        raise ValueError(f"preference set {path} holds {header.kind} data, align.mode is {kind}")
    latent_path = resolve_latent_path(path, header.latent_dataset)
    index = LatentIndex(latent_path)
    if index.header.text_dim != text_dim or index.header.latent_channels != channels:
        raise ValueError(
            f"{latent_path}: text_dim={index.header.text_dim}, channels="
            f"{index.header.latent_channels} do not fit the model ({text_dim}, {channels})"
        )
    key_to_row = {r.key: i for i, r in enumerate(index.records)}
    buckets: dict[tuple, list[int]] = {}
    for n, item in enumerate(items):
        keys = [item.chosen, item.rejected] if kind == "dpo" else [item.key]
        for k in keys:
            if k not in key_to_row:
                raise ValueError(f"{path} item {n}: latent sample {k!r} not in {latent_path}")
        shapes = {index.bucket_of(key_to_row[k]) for k in keys}
        if len(shapes) != 1:
            raise ValueError(
                f"{path} item {n}: chosen and rejected have different shapes {sorted(shapes)}"
            )
        buckets.setdefault(shapes.pop(), []).append(n)
    weights = [
        float(index.records[key_to_row[item.chosen if kind == "dpo" else item.key]].sample_weight)
        for item in items
    ]
    return Source(path, kind, items, index, key_to_row, dict(sorted(buckets.items())), weights)


class PreferenceSampler:
    """Step plans over several sources: each step draws a source by weight, then a bucket
    (probability proportional to its items), then ``items_per_micro_batch`` items for each
    global micro-batch from per-(source, bucket) epoch permutations. Each planned item is an
    :class:`ItemVisit` whose ``visit`` is the epoch of its pool (every epoch visits each
    item once), so the draw of :func:`build_batch` changes from epoch to epoch. A pure
    function of (seed, step, cursors); the cursors are the savable state. With ``weighted``
    and differing item draw weights in a source, that source draws by weight instead (module
    doc); the cursors then count draws."""

    def __init__(
        self,
        sources: list[Source],
        weights: list[float],
        *,
        items_per_micro_batch: int,
        micro_batches_per_step: int,
        seed: int,
        weighted: bool = True,
    ):
        self.sources = sources
        self.weights = weights
        self.per_mb = items_per_micro_batch
        self.n_micro = micro_batches_per_step
        self.seed = seed
        self.cursors: dict[str, int] = {}
        #: per source: its items' draw weights, or None (uniform epochs)
        self.item_weights = [
            src.draw_weights
            if weighted and src.draw_weights is not None and len(set(src.draw_weights)) > 1
            else None
            for src in sources
        ]
        for src, w in zip(sources, self.item_weights):
            if w is not None and not any(w[i] > 0 for pool in src.buckets.values() for i in pool):
                raise ValueError(f"preference set {src.path}: every item's sample_weight is 0")

    def plan(self, step: int) -> tuple[int, list[list[ItemVisit]]]:
        rng = random.Random(self.seed * 1_000_003 + step)
        s = rng.choices(range(len(self.sources)), weights=self.weights)[0]
        src = self.sources[s]
        keys = list(src.buckets)
        w = self.item_weights[s]
        if w is None:
            bucket_weights = [len(src.buckets[k]) for k in keys]
        else:
            bucket_weights = [sum(w[i] for i in src.buckets[k]) for k in keys]
        b = rng.choices(range(len(keys)), weights=bucket_weights)[0]
        pool = src.buckets[keys[b]]
        name = f"{s}:{b}"
        cursor = self.cursors.get(name, 0)
        if w is not None:
            cum = list(itertools.accumulate(w[i] for i in pool))
            micro = []
            for _ in range(self.n_micro):
                draws = range(cursor, cursor + self.per_mb)
                micro.append([
                    ItemVisit(random.Random(f"{self.seed}:{s}:{b}:{c}").choices(pool, cum_weights=cum)[0], c)
                    for c in draws
                ])  # fmt: skip
                cursor += self.per_mb
            self.cursors[name] = cursor
            return s, micro
        micro = []
        for _ in range(self.n_micro):
            mb = []
            for _ in range(self.per_mb):
                epoch, pos = divmod(cursor, len(pool))
                perm = list(pool)
                random.Random(self.seed * 7919 + s * 15485863 + b * 104729 + epoch).shuffle(perm)
                mb.append(ItemVisit(perm[pos], epoch))
                cursor += 1
            micro.append(mb)
        self.cursors[name] = cursor
        return s, micro

    def state_dict(self) -> dict:
        state = {"cursors": dict(self.cursors), "sources": [str(x.path) for x in self.sources]}
        weighted = [s for s, w in enumerate(self.item_weights) if w is not None]
        if weighted:  # their cursors count weighted draws, not epoch positions
            state["weighted"] = weighted
        return state

    def load_state_dict(self, state: dict) -> None:
        saved = list(state.get("weighted", []))
        now = [s for s, w in enumerate(self.item_weights) if w is not None]
        if saved != now:
            raise ValueError(
                f"preference-sampler state draws sources {saved} by sample_weight, this run "
                f"{now}: resume with the same data.weighted_sampling (and the same weights)"
            )
        self.cursors = {str(k): int(v) for k, v in state.get("cursors", {}).items()}


@dataclass
class PrefBatch:
    """Model inputs of one micro-batch. DPO: rows ``[w_1..w_B, l_1..l_B]``; KTO: ``[B]``."""

    noisy_BCTHW: torch.Tensor
    sigma_B: torch.Tensor
    target_BCTHW: torch.Tensor
    noisy_frames_BT: torch.Tensor
    drop_caption_B: torch.Tensor
    texts: list[torch.Tensor]
    fps_B: torch.Tensor
    latent_shape: tuple[int, ...]
    ids: list[str]
    seeds: list[int]  # draw seed of each item
    weight_B: torch.Tensor  # per item
    desirable_B: torch.Tensor  # KTO labels (all True for DPO)


def prepare_group(
    latents_GCTHW: torch.Tensor,
    height_px: int,
    width_px: int,
    cfg: ObjectiveConfig,
    seed: int,
    device=None,
):
    """Noisy inputs of G samples sharing ONE draw (task, mask, noise level, noise, caption
    dropout) from ``seed``: a DPO pair (G = 2) or a KTO sample (G = 1).

    The draws come from CPU generators (the same numbers on every device); the arithmetic
    (noisy input, velocity target) runs on ``device`` (default: the latents' device), as
    mugv-dit's ``prepare_inputs`` does: on the CPU it cost a DPO step ~25-45 ms more than a
    pre-training step on one H200 (2026-12-03)."""
    g, c, t, h, w = latents_GCTHW.shape
    device = latents_GCTHW.device if device is None else torch.device(device)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    task = choose_task(t, cfg.task_ratios, rng)
    mask_T = frame_mask(task, t, rng, cfg.continuation_max_frames)
    sigma = sample_logit_normal(
        1, mean=cfg.logit_normal_mean, std=cfg.logit_normal_std, generator=gen
    )
    if cfg.shift_by_resolution:
        sigma = shift_sigma(
            sigma, resolution_shift_ratio(height_px, width_px, t, cfg.base_resolution)
        )
    noise = torch.randn((1, c, t, h, w), generator=gen, dtype=torch.float32)
    drop = bool(torch.rand(1, generator=gen)[0] < cfg.caption_dropout)
    x0 = latents_GCTHW.to(device=device, dtype=torch.float32)
    noise = noise.to(device).expand(g, -1, -1, -1, -1)
    sigma_G = sigma.expand(g).float()
    noisy = add_noise(x0, noise, sigma_G.to(device))
    keep = mask_T[None, None, :, None, None].to(device)
    noisy = torch.where(keep, noisy, x0)
    return noisy, sigma_G, velocity_target(x0, noise), mask_T.expand(g, -1), drop


def visit_seeds(
    src: Source,
    visits: list[ItemVisit],
    data_seed: int,
    fixed_seeds: Mapping[str, int] | None = None,
) -> list[int]:
    """Draw seed of each visit: :func:`draw_seed` of (data seed, item, visit), or, with
    ``fixed_seeds`` (item id -> seed, the draws stored with precomputed reference errors),
    the item's fixed seed whatever the visit."""
    seeds = []
    for v in visits:
        if not isinstance(v, ItemVisit):
            raise TypeError(f"build_batch takes ItemVisit(index, visit), got {v!r}")
        ident = item_id(src.items[v.index])
        if fixed_seeds is None:
            seeds.append(draw_seed(data_seed, ident, v.visit))
        elif ident in fixed_seeds:
            seeds.append(int(fixed_seeds[ident]))
        else:
            raise ValueError(f"{src.path}: no stored draw of item {ident}")
    return seeds


def build_batch(
    src: Source,
    visits: list[ItemVisit],
    cfg: ObjectiveConfig,
    data_seed: int,
    device,
    *,
    fixed_seeds: Mapping[str, int] | None = None,
) -> PrefBatch:
    """Load, collate and noise the items of one micro-batch (one bucket); each visit draws
    from its seed (:func:`visit_seeds`)."""
    seeds = visit_seeds(src, visits, data_seed, fixed_seeds)
    groups = []
    for v, seed in zip(visits, seeds, strict=True):
        item = src.items[v.index]
        keys = [item.chosen, item.rejected] if src.kind == "dpo" else [item.key]
        samples = [src.index.load(src.key_to_row[k]) for k in keys]
        clean = collate(samples, "cpu")
        ident = item_id(item)
        noisy, sigma, target, mask, drop = prepare_group(
            clean.latents_BCTHW, clean.height_px, clean.width_px, cfg, seed, device=device
        )
        groups.append((noisy, sigma, target, mask, drop, clean, ident, item))
    order = [0, 1] if src.kind == "dpo" else [0]
    # DPO rows: all winners first, then all losers (so e[:B] are winners, e[B:] losers)
    rows = [(g, j) for j in order for g in range(len(groups))]

    def cat(k):
        return torch.stack([groups[g][k][j] for g, j in rows]).to(device)

    drop = torch.tensor([groups[g][4] for g, _ in rows])
    texts = [groups[g][5].texts[j].to(device) for g, j in rows]
    fps = torch.stack([groups[g][5].fps_B[j] for g, j in rows]).to(device)
    weight = torch.tensor([float(groups[g][7].weight) for g in range(len(groups))])
    desirable = torch.tensor(
        [bool(getattr(groups[g][7], "desirable", True)) for g in range(len(groups))]
    )
    noisy = cat(0)
    return PrefBatch(
        noisy_BCTHW=noisy,
        sigma_B=cat(1),
        target_BCTHW=cat(2),
        noisy_frames_BT=cat(3),
        drop_caption_B=drop,  # on the CPU, as mugv-dit passes it
        texts=texts,
        fps_B=fps,
        latent_shape=tuple(noisy.shape),
        ids=[groups[g][6] for g in range(len(groups))],
        seeds=seeds,
        weight_B=weight.to(device),
        desirable_B=desirable.to(device),
    )
