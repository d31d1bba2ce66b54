"""Dataset-level stages: steps that need every clip the per-clip stages kept.

A :class:`DatasetStage` sees the kept clips of the whole run at once (near-duplicates are
found across sources, sampling weights need the tag counts of all clips). Like a per-clip
:class:`~mugv_data.stages.base.ClipStage` it records its scores in ``clip.scores`` and its
verdict with :meth:`KeptClip.reject` as ``(stage, reason)``; :func:`run_dataset_stages`
drops the rejected clips before the next stage and returns one reject row per clip, the same
row (source, key, stage, kind, reason) a per-clip rejection gets in ``rejects.parquet``.

Order: dedup, then captions (the VLM, the slowest step, never sees a duplicate), tags (from
captions), balance (from tags). Every stage is a pure function of the staged per-source
results and the config, so a resumed run recomputes the same verdicts.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mugv_data.caption_files import CaptionTable, sidecar_caption
from mugv_data.config import CurateConfig
from mugv_data.dedup import find_duplicates
from mugv_data.per_source import ClipOutcome, SourceResult
from mugv_data.tags import Tagger, balanced_weights


@dataclass
class KeptClip:
    """A clip that survived the per-clip stages, with its dataset-level fields."""

    source: SourceResult
    clip: ClipOutcome
    caption: str = ""
    tags: list[str] = field(default_factory=list)
    weight: float = 1.0

    def reject(self, stage: str, reason: str) -> None:
        """Record the rejection on the clip, as a per-clip stage does (first one wins)."""
        if self.clip.rejected_stage is None:
            self.clip.rejected_stage, self.clip.reason = stage, reason


def reject_row(source: str, key: str | None, stage: str, kind: str | None, reason: str | None):
    """One row of ``rejects.parquet``."""
    return dict(source=source, key=key, stage=stage, kind=kind, reason=reason)


class DatasetStage(ABC):
    """One dataset-level step: ``process`` sets fields of the kept clips and may reject some."""

    name: ClassVar[str]

    @abstractmethod
    def process(self, clips: list[KeptClip]) -> None:
        """Score, annotate or reject ``clips`` (all clips kept so far, in a stable order)."""


class DedupStage(DatasetStage):
    """Near-duplicate removal: the later clip of a pair with cosine similarity >= threshold
    is rejected (score ``dedup_similarity``); CLIP embeddings when the aesthetic stage ran
    (``dedup.embedding``), else the tiny-thumbnail embeddings. Exact search for small sets,
    faiss clustered search beyond ``dedup.exact_max_clips`` (``dedup.method``); a streaming
    engine calls :func:`mugv_data.dedup.dedup_store` on an on-disk store instead."""

    name = "dedup"

    def __init__(self, config: CurateConfig) -> None:
        self.config = config.dedup
        self.clip_embeddings_configured = (
            config.filters.aesthetic.enabled or config.filters.clip_embedding.enabled
        )

    def embeddings(self, clips: list[KeptClip]) -> np.ndarray:
        """[N, D] embeddings for near-duplicate search (see ``dedup.embedding``)."""
        kind = self.config.embedding
        have_clip = all(k.clip.clip_embedding is not None for k in clips)
        if kind == "clip" and not have_clip:
            raise ValueError(
                "dedup.embedding=clip needs CLIP embeddings: filters.clip_embedding.enabled=true "
                "(open_clip) or filters.aesthetic.enabled=true"
            )
        if kind == "clip" or (kind == "auto" and have_clip):
            return np.asarray([k.clip.clip_embedding for k in clips], dtype=np.float32)
        return np.asarray([k.clip.embedding for k in clips], dtype=np.float32)

    def process(self, clips: list[KeptClip]) -> None:
        if not clips:
            return
        threshold = self.config.threshold
        c = self.config
        dups = find_duplicates(
            self.embeddings(clips),
            threshold,
            method=c.method,
            exact_max_rows=c.exact_max_clips,
            n_clusters=c.clusters,
            max_probe=c.max_probe,
            memory_mb=c.memory_mb,
            seed=c.seed,
        ).as_dict()
        for i, (j, sim) in sorted(dups.items()):
            k = clips[i]
            k.clip.scores["dedup_similarity"] = sim
            k.reject(
                self.name,
                f"near-duplicate of {clips[j].clip.key} (cos {sim:.4f} >= {threshold:g})",
            )


class CaptionStage(DatasetStage):
    """Captions from a sidecar ``VIDEO.txt``, a CSV/JSONL table, or the VLM (``captions``).

    A clip the VLM cannot read (its staged mp4 unreadable) is rejected with the error; a clip
    without a sidecar or table caption keeps an empty caption, as before.
    """

    name = "captions"

    def __init__(
        self,
        config: CurateConfig,
        mp4_path: Callable[[str], Path],
        read_mp4: Callable[[str], bytes] | None = None,
    ) -> None:
        """``mp4_path(key)``: the staged clip (named in errors); ``read_mp4(key)``: its bytes
        when the clip travelled with the work unit (a worker on another node)."""
        self.config = config.captions
        self.mp4_path = mp4_path
        self.read_mp4 = read_mp4
        self.progress = False
        self._captioner = None  # loaded once, on first use

    def process(self, clips: list[KeptClip]) -> None:
        cc = self.config
        if cc.source == "sidecar":
            for k in clips:
                k.caption = sidecar_caption(k.source.source) or ""
        elif cc.source == "table":
            if not cc.table_path:
                raise ValueError("captions.source=table needs captions.table_path")
            table = CaptionTable(cc.table_path)
            for k in clips:
                k.caption = table.lookup(k.source.source, k.clip.start_s, k.clip.end_s) or ""
        elif cc.source == "vlm" and clips:
            self._vlm(clips)

    def _vlm(self, clips: list[KeptClip]) -> None:
        from tqdm import tqdm

        from mugv_data.caption_vlm import load_captioner, read_clip_frames

        if self._captioner is None:
            self._captioner = load_captioner(self.config)
        captioner = self._captioner
        bs = self.config.batch_size
        for a in tqdm(
            range(0, len(clips), bs), desc="captions", unit="batch", disable=not self.progress
        ):
            readable, frames = [], []
            for k in clips[a : a + bs]:
                path = self.mp4_path(k.clip.key)
                src = io.BytesIO(self.read_mp4(k.clip.key)) if self.read_mp4 else path
                try:
                    frames.append(
                        read_clip_frames(src, self.config.num_frames, self.config.frame_short_side)
                    )
                except (OSError, ValueError) as e:  # av errors are OSError / ValueError
                    k.reject(self.name, f"{path}: cannot read the clip to caption it: {e}")
                    continue
                readable.append(k)
            if readable:
                for k, c in zip(readable, captioner.caption_frames(frames), strict=True):
                    k.caption = c


class TagStage(DatasetStage):
    """Entity tags from each clip's caption (``tags.vocabulary``)."""

    name = "tags"

    def __init__(self, config: CurateConfig) -> None:
        self.tagger = Tagger(config.tags.vocabulary)

    def process(self, clips: list[KeptClip]) -> None:
        for k in clips:
            k.tags = self.tagger(k.caption)


class BalanceStage(DatasetStage):
    """Sampling weights from tag frequencies (``balance.alpha``)."""

    name = "balance"

    def __init__(self, config: CurateConfig) -> None:
        self.alpha = config.balance.alpha

    def process(self, clips: list[KeptClip]) -> None:
        if not clips:
            return
        for k, w in zip(clips, balanced_weights([k.tags for k in clips], self.alpha)):
            k.weight = float(w)


def build_dataset_stages(
    config: CurateConfig, mp4_path: Callable[[str], Path], *, progress: bool = False
) -> list[DatasetStage]:
    """Enabled dataset-level stages, in their order (captions always run)."""
    stages: list[DatasetStage] = []
    if config.dedup.enabled:
        stages.append(DedupStage(config))
    captions = CaptionStage(config, mp4_path)
    captions.progress = progress
    stages.append(captions)
    if config.tags.enabled:
        stages.append(TagStage(config))
    if config.balance.enabled:
        stages.append(BalanceStage(config))
    return stages


def run_dataset_stages(
    stages: list[DatasetStage], kept: list[KeptClip]
) -> tuple[list[KeptClip], list[dict[str, Any]]]:
    """Run ``stages`` in order; each sees only the clips no earlier stage rejected. Returns
    the survivors and one reject row per rejected clip (stage and kind: the stage's name)."""
    rejects: list[dict[str, Any]] = []
    for stage in stages:
        stage.process(kept)
        survivors = []
        for k in kept:
            if k.clip.rejected_stage is None:
                survivors.append(k)
            else:
                c = k.clip
                rejects.append(
                    reject_row(k.source.source, c.key, c.rejected_stage, c.rejected_stage, c.reason)
                )
        kept = survivors
    return kept, rejects
