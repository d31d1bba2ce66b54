"""Clip shards (format ``mugv.clip-shards``): curated training clips from mugv-data.

Each sample is ``KEY.mp4`` (the clip) + ``KEY.json`` (its :class:`ClipRecord`). The manifest
has one row per clip with every filter score as a ``score.<name>`` column.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from mugv_formats.indexed import IndexedShardReader
from mugv_formats.shards import (
    DatasetHeader,
    ShardRecord,
    ShardSetReader,
    ShardSetWriter,
    new_header,
)
from mugv_formats.versioning import CLIP_SHARDS_FORMAT


class ClipDatasetHeader(DatasetHeader):
    """``dataset.json`` of a clip-shard dataset."""

    format: str = CLIP_SHARDS_FORMAT


class ClipRecord(ShardRecord):
    """One curated clip."""

    source: str = Field(description="path or URI of the source video")
    start_s: float = Field(ge=0, description="clip start in the source, seconds")
    end_s: float = Field(description="clip end in the source, seconds (exclusive)")
    fps: float = Field(gt=0, description="frame rate of the stored clip")
    num_frames: int = Field(ge=1, description="frames in the stored clip")
    width: int = Field(ge=1, description="stored clip width in pixels")
    height: int = Field(ge=1, description="stored clip height in pixels")
    scores: dict[str, float] = Field(default_factory=dict, description="filter name -> score")
    caption: str = ""
    tags: list[str] = Field(default_factory=list, description="entity tags from the caption")
    sample_weight: float = Field(default=1.0, ge=0, description="balanced-sampling weight")
    extra: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _span(self) -> ClipRecord:
        if self.end_s <= self.start_s:
            raise ValueError(f"end_s ({self.end_s}) must be greater than start_s ({self.start_s})")
        return self

    @property
    def sha256(self) -> str:
        """Checksum of the stored ``mp4`` member."""
        return self.checksums.get("mp4", "")

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


class ClipShardWriter(ShardSetWriter[ClipDatasetHeader, ClipRecord]):
    """Writes a clip-shard dataset; reopening the same directory resumes (see
    :class:`~mugv_formats.shards.ShardSetWriter`)."""

    def __init__(
        self,
        out_dir: str | Path,
        *,
        producer: str,
        config: Mapping[str, Any] | None = None,
        clips_per_shard: int = 64,
    ) -> None:
        header = new_header(ClipDatasetHeader, CLIP_SHARDS_FORMAT, producer=producer, config=config)
        super().__init__(out_dir, header, ClipRecord, samples_per_shard=clips_per_shard)

    def write(self, record: ClipRecord, mp4_bytes: bytes) -> ClipRecord:
        if not mp4_bytes:
            raise ValueError(f"clip {record.key!r}: empty video bytes")
        return self.write_sample(record, {"mp4": mp4_bytes})


class ClipDataset(ShardSetReader[ClipDatasetHeader, ClipRecord]):
    """Reads a clip-shard dataset. Iterating yields ``(ClipRecord, mp4_bytes)`` after checking
    each clip's sha256."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, CLIP_SHARDS_FORMAT, ClipDatasetHeader, ClipRecord)

    def open_indexed(
        self, *, verify: bool = True
    ) -> IndexedShardReader[ClipDatasetHeader, ClipRecord]:
        """Random access by key or index (:class:`mugv_formats.indexed.IndexedShardReader`)."""
        return IndexedShardReader(self, verify=verify)

    def __iter__(self) -> Iterator[tuple[ClipRecord, bytes]]:
        for record, members in self.iter_samples():
            yield record, members["mp4"]

    def iter_clips(
        self, shard: str | None = None, *, verify: bool = True
    ) -> Iterator[tuple[ClipRecord, bytes]]:
        it = self.iter_shard(shard, verify=verify) if shard else self.iter_samples(verify=verify)
        for record, members in it:
            yield record, members["mp4"]
