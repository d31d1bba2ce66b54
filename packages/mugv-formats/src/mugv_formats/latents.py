"""Latent shards (format ``mugv.latent-shards``): VAE latents + text features for the DiT.

Each sample is ``KEY.latents.npy`` (``[C, T', H', W']``), optionally ``KEY.text.npy``
(``[L, D]``, L <= ``max_text_len``) and ``KEY.json`` (its :class:`LatentRecord`). The header
names the VAE checkpoint, the per-channel latent statistics, whether stored latents are already
normalised (they are applied exactly once: by the writer when ``latents_normalized`` is true,
never again by a reader), and the text encoder. ``.nv-meta/`` makes the directory a
megatron-energon WebDataset (crude samples) so Megatron's own loader can read it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from pydantic import Field, model_validator

from mugv_formats.errors import CorruptShardError
from mugv_formats.indexed import IndexedShardReader
from mugv_formats.shards import (
    DatasetHeader,
    ShardRecord,
    ShardSetReader,
    ShardSetWriter,
    new_header,
)
from mugv_formats.versioning import LATENT_SHARDS_FORMAT

_ALLOWED_DTYPES = (np.float16, np.float32)


class LatentDatasetHeader(DatasetHeader):
    """``dataset.json`` of a latent-shard dataset."""

    format: str = LATENT_SHARDS_FORMAT
    vae_checkpoint_id: str = Field(description="id of the VAE checkpoint that made the latents")
    latent_channels: int = Field(default=24, ge=1)
    compression: tuple[int, int, int] = Field(default=(8, 8, 8), description="(T, H, W) factors")
    latent_mean: list[float] = Field(description="per-channel mean measured on data")
    latent_std: list[float] = Field(description="per-channel std measured on data")
    latents_normalized: bool = Field(
        default=True, description="stored latents are (z - mean) / std already; apply nothing"
    )
    text_encoder_id: str | None = None
    text_dim: int | None = Field(default=None, ge=1)
    max_text_len: int = Field(default=300, ge=1)

    @model_validator(mode="after")
    def _stats(self) -> LatentDatasetHeader:
        for name in ("latent_mean", "latent_std"):
            n = len(getattr(self, name))
            if n != self.latent_channels:
                raise ValueError(
                    f"{name} has {n} values, latent_channels is {self.latent_channels}"
                )
        if any(s <= 0 for s in self.latent_std):
            raise ValueError(f"latent_std must be positive, got {self.latent_std}")
        return self


class LatentRecord(ShardRecord):
    """One encoded sample."""

    clip_key: str = Field(default="", description="key of the source clip")
    caption: str = ""
    fps: float = Field(gt=0)
    num_frames: int = Field(ge=1, description="pixel frames encoded")
    height: int = Field(ge=1, description="pixel height encoded")
    width: int = Field(ge=1, description="pixel width encoded")
    latent_shape: list[int] = Field(
        default_factory=list, description="[C, T', H', W'] (set by writer)"
    )
    text_length: int | None = Field(default=None, description="text tokens (set by writer)")
    sample_weight: float = Field(default=1.0, ge=0)
    extra: dict[str, Any] = Field(default_factory=dict)


class LatentSample(NamedTuple):
    record: LatentRecord
    latents: np.ndarray
    text: np.ndarray | None


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _load_npy(data: bytes, where: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise CorruptShardError(f"{where}: not a readable .npy array ({e})") from None


class LatentShardWriter(ShardSetWriter[LatentDatasetHeader, LatentRecord]):
    """Writes a latent-shard dataset; validates shapes against the header."""

    def __init__(
        self,
        out_dir: str | Path,
        header: LatentDatasetHeader,
        *,
        samples_per_shard: int = 64,
        energon: bool | None = None,
    ) -> None:
        """``energon``: index the shards for megatron-energon on close (``None``: when it is
        installed)."""
        super().__init__(out_dir, header, LatentRecord, samples_per_shard=samples_per_shard)
        self._energon = energon

    @staticmethod
    def make_header(
        *, producer: str, config: dict | None = None, **fields: Any
    ) -> LatentDatasetHeader:
        return new_header(
            LatentDatasetHeader, LATENT_SHARDS_FORMAT, producer=producer, config=config, **fields
        )

    def write(
        self, record: LatentRecord, latents: np.ndarray, text: np.ndarray | None = None
    ) -> LatentRecord:
        h = self.header
        latents = np.asarray(latents)
        if latents.ndim != 4 or latents.shape[0] != h.latent_channels:
            raise ValueError(
                f"sample {record.key!r}: latents must be [C={h.latent_channels}, T, H, W], "
                f"got shape {list(latents.shape)}"
            )
        if latents.dtype not in _ALLOWED_DTYPES:
            raise ValueError(
                f"sample {record.key!r}: latents dtype {latents.dtype} not float16/float32"
            )
        if not np.isfinite(latents).all():
            raise ValueError(f"sample {record.key!r}: latents contain NaN or Inf")
        members = {"latents.npy": _npy_bytes(latents)}
        update: dict[str, Any] = {"latent_shape": list(latents.shape), "text_length": None}
        if text is not None:
            text = np.asarray(text)
            if text.ndim != 2:
                raise ValueError(
                    f"sample {record.key!r}: text features must be [L, D], got {list(text.shape)}"
                )
            if h.text_dim is not None and text.shape[1] != h.text_dim:
                raise ValueError(
                    f"sample {record.key!r}: text dim {text.shape[1]} != header text_dim {h.text_dim}"
                )
            if text.shape[0] > h.max_text_len:
                raise ValueError(
                    f"sample {record.key!r}: {text.shape[0]} text tokens > max_text_len {h.max_text_len}"
                )
            if text.dtype not in _ALLOWED_DTYPES:
                raise ValueError(
                    f"sample {record.key!r}: text dtype {text.dtype} not float16/float32"
                )
            members["text.npy"] = _npy_bytes(text)
            update["text_length"] = int(text.shape[0])
        return self.write_sample(record.model_copy(update=update), members)

    def _finalize(self, out_dir: Path) -> None:
        from mugv_formats import energon

        energon.write_nv_meta(out_dir, self.header.shards)
        want = energon.energon_available() if self._energon is None else self._energon
        if want and self.header.shards:  # energon cannot index nothing; an empty set stays valid
            energon.index_for_energon(out_dir, list(self.header.shards))


class LatentDataset(ShardSetReader[LatentDatasetHeader, LatentRecord]):
    """Reads a latent-shard dataset. Iterating yields :class:`LatentSample`."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, LATENT_SHARDS_FORMAT, LatentDatasetHeader, LatentRecord)

    @staticmethod
    def decode(record: LatentRecord, members: dict[str, bytes], where: str = "") -> LatentSample:
        """Turn a sample's raw members into arrays, checking them against the record."""
        where = where or record.key
        if "latents.npy" not in members:
            raise CorruptShardError(f"{where}: member {record.key}.latents.npy missing")
        latents = _load_npy(members["latents.npy"], f"{where}: member {record.key}.latents.npy")
        if record.latent_shape and list(latents.shape) != record.latent_shape:
            raise CorruptShardError(
                f"{where}: {record.key}.latents.npy has shape {list(latents.shape)}, record says {record.latent_shape}"
            )
        text = None
        if "text.npy" in members:
            text = _load_npy(members["text.npy"], f"{where}: member {record.key}.text.npy")
        return LatentSample(record, latents, text)

    def __iter__(self) -> Iterator[LatentSample]:
        for name in self.header.shards:
            yield from self.iter_shard_samples(name)

    def open_indexed(self, *, verify: bool = True) -> IndexedLatentReader:
        """Random access: ``reader.load(key_or_index)`` -> :class:`LatentSample`, checked."""
        return IndexedLatentReader(self, verify=verify)

    def iter_shard_samples(self, shard: str, *, verify: bool = True) -> Iterator[LatentSample]:
        for record, members in self.iter_shard(shard, verify=verify):
            yield self.decode(record, members, str(self.path / shard))


class IndexedLatentReader(IndexedShardReader[LatentDatasetHeader, LatentRecord]):
    """Random access to a latent-shard dataset (:meth:`LatentDataset.open_indexed`)."""

    def load(self, key_or_index: str | int) -> LatentSample:
        """Read, verify and decode one sample, by key or manifest index."""
        record, members = self.load_members(key_or_index)
        return LatentDataset.decode(record, members, str(self.path / record.shard))
