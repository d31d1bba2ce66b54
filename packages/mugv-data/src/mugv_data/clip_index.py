"""The staged clip index: the clips the per-clip stages kept, as parquet parts on disk.

``OUT/.staging/index/part-NNNNNN.parquet`` holds one row per kept clip, in discovery order of
the sources and clip order within a source, at most :data:`PART_CLIPS` rows a part. It is
rebuilt from the per-source results (``sources/SID.json``) on every run, one part at a time,
so the driver never holds more than one part: the dataset-level stages (dedup, captions,
tags, balance) and the shard writer read it part by part, and dedup reads its embedding
columns through :class:`IndexEmbeddings`.

Columns: ``key``, ``source`` (the path's file-system bytes), ``source_id``, ``start_frame``,
``end_frame``, ``start_s``, ``end_s``, ``fps``, ``num_frames``, ``width``, ``height``,
``scores`` (JSON), ``decoder``, ``source_fps``, ``embedding`` (thumbnail, float32 list) and
``clip_embedding`` (CLIP, float32 list or null).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from mugv_formats import atomic_write_bytes

from mugv_data.per_source import ClipOutcome, SourceResult

#: Rows per index part (the driver holds one part at a time, as Arrow columns).
PART_CLIPS = 1024
#: Rows the index writer holds as Python objects before making them an Arrow batch.
BATCH_ROWS = 64
#: The index columns the shard writer and the caption units read (no embeddings).
RECORD_COLUMNS = [
    "key", "source", "source_id", "start_frame", "end_frame", "start_s", "end_s", "fps",
    "num_frames", "width", "height", "scores", "decoder", "source_fps",
]  # fmt: skip

INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source", pa.binary()),
        ("source_id", pa.string()),
        ("start_frame", pa.int64()),
        ("end_frame", pa.int64()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("fps", pa.float64()),
        ("num_frames", pa.int64()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("scores", pa.string()),
        ("decoder", pa.string()),
        ("source_fps", pa.float64()),
        ("embedding", pa.list_(pa.float32())),
        ("clip_embedding", pa.list_(pa.float32())),
    ]
)


def write_table_atomic(path: Path, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def index_row(res: SourceResult, c: ClipOutcome) -> dict[str, Any]:
    return dict(
        key=c.key,
        source=os.fsencode(res.source),
        source_id=res.source_id,
        start_frame=c.start_frame,
        end_frame=c.end_frame,
        start_s=c.start_s,
        end_s=c.end_s,
        fps=c.fps,
        num_frames=c.num_frames,
        width=c.width,
        height=c.height,
        scores=json.dumps(c.scores),
        decoder=res.decoder,
        source_fps=res.probe["fps"] if res.probe else None,
        embedding=c.embedding,
        clip_embedding=c.clip_embedding,
    )


class IndexWriter:
    """Writes index parts of :data:`PART_CLIPS` rows (``add`` then ``close``); keeps the
    running fingerprint of every key written (dedup and caption results are tied to it).
    Rows are held as Arrow batches of :data:`BATCH_ROWS` until their part is written."""

    def __init__(self, folder: Path, part_clips: int = PART_CLIPS) -> None:
        self.folder = folder
        self.part_clips = part_clips
        for p in folder.glob("part-*.parquet"):  # a previous run's index: rebuilt
            p.unlink()
        self._rows: list[dict[str, Any]] = []
        self._batches: list[pa.RecordBatch] = []
        self._in_part = 0
        self.parts = 0
        self.rows = 0
        self.all_clip_embeddings = True
        self._sha = hashlib.sha256()

    def add(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        self.rows += 1
        self._in_part += 1
        self._sha.update(row["key"].encode() + b"\n")
        self.all_clip_embeddings &= row["clip_embedding"] is not None
        if len(self._rows) >= BATCH_ROWS:
            self._batch()
        if self._in_part >= self.part_clips:
            self._flush()

    def _batch(self) -> None:
        if self._rows:
            self._batches.append(pa.RecordBatch.from_pylist(self._rows, schema=INDEX_SCHEMA))
            self._rows = []

    def _flush(self) -> None:
        self._batch()
        if not self._batches:
            return
        table = pa.Table.from_batches(self._batches, schema=INDEX_SCHEMA)
        write_table_atomic(self.folder / part_name(self.parts), table)
        self.parts += 1
        self._batches = []
        self._in_part = 0

    def close(self) -> str:
        """Flush the last part; returns the fingerprint of the index (its keys in order)."""
        self._flush()
        return self._sha.hexdigest()


def part_name(i: int) -> str:
    return f"part-{i:06d}.parquet"


def index_parts(folder: Path) -> list[Path]:
    return sorted(folder.glob("part-*.parquet"))


def read_part(path: Path, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(path, columns=columns)


class IndexEmbeddings:
    """Clip embeddings of the staged index, read part by part (never all pairs at once).

    ``column`` is ``embedding`` (thumbnail) or ``clip_embedding`` (CLIP). Rows are in index
    order; every row has a ``key``. Dedup copies it into a :mod:`mugv_data.dedup` store:
    ``iter_parts`` streams ``(keys, emb_ND)`` with float32 embeddings as written (not
    normalised); ``read_all`` gathers them for exact search on small sets.
    """

    def __init__(self, folder: str | Path, column: str) -> None:
        self.folder = Path(folder)
        if column not in ("embedding", "clip_embedding"):
            raise ValueError(f"embedding column {column!r} is not embedding or clip_embedding")
        self.column = column
        self.parts = index_parts(self.folder)

    def __len__(self) -> int:
        return sum(pq.ParquetFile(p).metadata.num_rows for p in self.parts)

    def iter_parts(self) -> Iterator[tuple[list[str], np.ndarray]]:
        """``(keys, emb_ND float32)`` of each part, in index order."""
        for p in self.parts:
            t = read_part(p, ["key", self.column])
            col = t.column(self.column).combine_chunks()
            if col.null_count:
                raise ValueError(f"{p}: {self.column} missing on {col.null_count} rows")
            n = len(t)
            flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
            yield t.column("key").to_pylist(), flat.reshape(n, -1) if n else flat.reshape(0, 0)

    def read_all(self) -> tuple[list[str], np.ndarray]:
        keys: list[str] = []
        embs = []
        for k, e in self.iter_parts():
            keys.extend(k)
            if len(k):
                embs.append(e)
        return keys, (np.concatenate(embs) if embs else np.zeros((0, 0), np.float32))
