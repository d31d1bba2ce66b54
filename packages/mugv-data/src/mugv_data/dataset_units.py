"""Dataset-level stages as work units over the staged index, run on the engine's workers.

The driver never runs a dataset-level stage over an in-memory list of clips:

- **dedup**: one unit, run on a worker on the driver's node, copies the index's embeddings
  (:class:`~mugv_data.clip_index.IndexEmbeddings`) into an on-disk embedding store, searches it
  (:func:`mugv_data.dedup.dedup_store`: exact, or faiss k-means clusters one at a time) and
  writes ``.staging/dedup.parquet`` (``key``, ``duplicate_of``, ``similarity``) stamped with the
  index fingerprint, so a resumed run reuses it only for the same clips;
- **captions and tags**: units of at most ``captions.batch_size * 4`` clips of one index part
  (duplicates left out), each carrying its clips' mp4 bytes, captioned (sidecar, table, VLM)
  and tagged on caption workers (the VLM on GPU workers, batched); each unit's result is
  ``.staging/captions/UNIT.parquet`` (``key``, ``caption``, ``tags``, ``reject``), written when
  it returns: a resumed run captions only the units not yet written;
- **balance**: :class:`TagBalance` counts tag groups while the driver streams the caption
  results (a handful of distinct groups, whatever the number of clips), then gives each
  clip the weight :func:`~mugv_data.tags.balanced_weights` would.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mugv_data.clip_index import IndexEmbeddings, index_parts, read_part, write_table_atomic
from mugv_data.config import CurateConfig
from mugv_data.engines import WorkerSpec
from mugv_data.per_source import ClipOutcome, SourceResult
from mugv_data.stages.base import Resources
from mugv_data.stages.dataset import CaptionStage, KeptClip, TagStage
from mugv_data.tags import UNTAGGED

DEDUP_SCHEMA = pa.schema(
    [("key", pa.string()), ("duplicate_of", pa.string()), ("similarity", pa.float64())]
)
CAPTION_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("caption", pa.string()),
        ("tags", pa.list_(pa.string())),
        ("reject", pa.string()),
    ]
)
FINGERPRINT = b"mugv.index_fingerprint"


# -- dedup ------------------------------------------------------------------------------------
def dedup_column(config: CurateConfig, all_clip_embeddings: bool) -> str:
    """The index column dedup searches (``dedup.embedding``: ``auto`` takes CLIP embeddings
    when every kept clip has one)."""
    kind = config.dedup.embedding
    if kind == "clip" and not all_clip_embeddings:
        raise ValueError(
            "dedup.embedding=clip needs CLIP embeddings: filters.clip_embedding.enabled=true "
            "(open_clip) or filters.aesthetic.enabled=true"
        )
    if kind == "clip" or (kind == "auto" and all_clip_embeddings):
        return "clip_embedding"
    return "embedding"


def dedup_done(path: Path, fingerprint: str) -> bool:
    """``dedup.parquet`` exists and was computed for the index with this fingerprint."""
    if not path.is_file():
        return False
    meta = pq.read_schema(path).metadata or {}
    return meta.get(FINGERPRINT) == fingerprint.encode()


def build_dedup_worker(config: CurateConfig):
    """One unit ``{index, column, store, out, fingerprint}``: copy the index's embedding column
    into an :class:`~mugv_data.dedup.EmbeddingStoreWriter` store (one part per index part, in
    index order, so the greedy rule keeps the earlier clip), search it with
    :func:`~mugv_data.dedup.dedup_store` (exact or faiss-clustered, ``dedup.*``), and write
    ``dedup.parquet`` stamped with the index fingerprint. Memory: one index part plus what the
    search holds (``dedup.memory_mb`` for the clustered search)."""
    import shutil

    from mugv_data.dedup import DECISIONS, EmbeddingStoreWriter, dedup_store

    c = config.dedup

    def run(unit: dict[str, Any]) -> int:
        folder = Path(unit["store"])
        if folder.exists():  # a store from another index (or a half-written one): rebuilt
            shutil.rmtree(folder)
        writer = None
        for keys, emb_ND in IndexEmbeddings(unit["index"], unit["column"]).iter_parts():
            if not keys:
                continue
            writer = writer or EmbeddingStoreWriter(folder, emb_ND.shape[1])
            writer.add(keys, emb_ND)
        rows = DEDUP_SCHEMA.empty_table()
        if writer is not None:
            dedup_store(
                folder,
                c.threshold,
                method=c.method,
                exact_max_rows=c.exact_max_clips,
                n_clusters=c.clusters,
                max_probe=c.max_probe,
                memory_mb=c.memory_mb,
                seed=c.seed,
            )
            d = pq.read_table(folder / DECISIONS, columns=["clip_id", "duplicate_of", "similarity"])
            rows = pa.table(
                {
                    "key": d.column("clip_id"),
                    "duplicate_of": d.column("duplicate_of"),
                    "similarity": d.column("similarity").cast(pa.float64()),
                },
                schema=DEDUP_SCHEMA,
            )
        rows = rows.replace_schema_metadata({FINGERPRINT: unit["fingerprint"].encode()})
        write_table_atomic(Path(unit["out"]), rows)
        shutil.rmtree(folder, ignore_errors=True)
        return len(rows)

    return run


def dedup_spec(config: CurateConfig) -> WorkerSpec:
    return WorkerSpec("dedup", build_dedup_worker, Resources(cpus=1), local_node=True)


def read_duplicates(path: Path) -> dict[str, tuple[str, float]]:
    """``{duplicate key: (kept key, similarity)}`` (one entry per duplicate only)."""
    t = pq.read_table(path)
    return {
        k: (of, s)
        for k, of, s in zip(
            t.column("key").to_pylist(),
            t.column("duplicate_of").to_pylist(),
            t.column("similarity").to_pylist(),
            strict=True,
        )
    }


# -- captions and tags ------------------------------------------------------------------------
def unit_clips(config: CurateConfig) -> int:
    return max(1, config.captions.batch_size * 4)


def caption_unit_name(part: int, j: int) -> str:
    return f"p{part:06d}-u{j:04d}"


def caption_resources(config: CurateConfig) -> Resources:
    cc = config.captions
    if cc.source == "vlm":
        gpu = 1.0 if cc.device.startswith("cuda") else 0.0
        return Resources(cpus=1, gpus=gpu, memory_mb=4096)
    return Resources(cpus=1)


def build_caption_worker(config: CurateConfig):
    """Captions (and tags) of one unit: ``{"name", "clips": [{key, source, start_s, end_s,
    mp4_path, mp4}]}`` -> rows of ``CAPTION_SCHEMA``. The VLM is loaded once per worker."""
    blobs: dict[str, bytes] = {}
    paths: dict[str, str] = {}

    def read_mp4(key: str) -> bytes:
        if key not in blobs:
            raise FileNotFoundError(f"staged clip {paths[key]} is missing")
        return blobs[key]

    captions = CaptionStage(config, lambda key: Path(paths[key]), read_mp4=read_mp4)
    tagger = TagStage(config) if config.tags.enabled else None

    def run(unit: dict[str, Any]) -> list[dict[str, Any]]:
        blobs.clear()
        paths.clear()
        kept = []
        for c in unit["clips"]:
            paths[c["key"]] = c["mp4_path"]
            if c.get("mp4") is not None:
                blobs[c["key"]] = c["mp4"]
            clip = ClipOutcome(c["key"], 0, 0, 1, c["start_s"], c["end_s"], {}, None, None)
            kept.append(KeptClip(SourceResult(os.fsdecode(c["source"]), ""), clip))
        captions.process(kept)
        ok = [k for k in kept if k.clip.rejected_stage is None]
        if tagger is not None:
            tagger.process(ok)
        return [
            dict(key=k.clip.key, caption=k.caption, tags=k.tags, reject=k.clip.reason) for k in kept
        ]

    return run


def caption_spec(config: CurateConfig) -> WorkerSpec:
    return WorkerSpec("captions", build_caption_worker, caption_resources(config))


def caption_units(
    index: Path,
    out: Path,
    duplicates: dict[str, tuple[str, float]],
    config: CurateConfig,
    mp4_path,
) -> Iterator[dict[str, Any]]:
    """Units whose result is not yet in ``out`` (a resumed run skips the written ones; a
    written unit whose keys differ, after a change of inputs, is redone)."""
    size = unit_clips(config)
    for pi, part in enumerate(index_parts(index)):
        t = read_part(part, ["key", "source", "start_s", "end_s"]).to_pylist()
        rows = [r for r in t if r["key"] not in duplicates]
        for j, a in enumerate(range(0, len(rows), size)):
            chunk = rows[a : a + size]
            name = caption_unit_name(pi, j)
            done = out / f"{name}.parquet"
            if done.is_file() and pq.read_table(done, columns=["key"]).column(
                "key"
            ).to_pylist() == [r["key"] for r in chunk]:
                continue
            clips = []
            for r in chunk:
                p = mp4_path(r["key"])
                mp4 = p.read_bytes() if config.captions.source == "vlm" and p.is_file() else None
                clips.append(dict(r, mp4_path=str(p), mp4=mp4))
            yield dict(name=name, clips=clips)


def write_caption_unit(out: Path, name: str, rows: list[dict[str, Any]]) -> None:
    write_table_atomic(out / f"{name}.parquet", pa.Table.from_pylist(rows, schema=CAPTION_SCHEMA))


def read_caption_part(out: Path, part: int) -> dict[str, dict[str, Any]]:
    """Caption rows of every unit of index part ``part``, by key."""
    rows: dict[str, dict[str, Any]] = {}
    for p in sorted(out.glob(f"p{part:06d}-u*.parquet")):
        for r in pq.read_table(p).to_pylist():
            rows[r["key"]] = r
    return rows


# -- balance ----------------------------------------------------------------------------------
class TagBalance:
    """Streaming :func:`~mugv_data.tags.balanced_weights`: ``add`` every clip's tags, then
    ``weight(tags)`` gives the same weight; memory is one counter per distinct tag group."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.groups: Counter[tuple[str, ...]] = Counter()
        self._scale: float | None = None

    def add(self, tags: list[str]) -> None:
        self.groups[tuple(tags) if tags else (UNTAGGED,)] += 1
        self._scale = None

    def _raw(self, group: tuple[str, ...], counts: Counter) -> float:
        return float(np.mean([counts[t] ** -self.alpha for t in group]))

    def _finish(self) -> None:
        counts: Counter[str] = Counter()
        for g, n in self.groups.items():
            for t in g:
                counts[t] += n
        self._counts = counts
        total = sum(n * self._raw(g, counts) for g, n in self.groups.items())
        n = sum(self.groups.values())
        self._scale = n / total if total > 0 else 1.0

    def weight(self, tags: list[str]) -> float:
        if self._scale is None:
            self._finish()
        g = tuple(tags) if tags else (UNTAGGED,)
        return self._raw(g, self._counts) * self._scale
