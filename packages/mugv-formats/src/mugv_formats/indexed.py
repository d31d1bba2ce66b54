"""Random access to the samples of a sharded dataset, by key or by manifest index.

:meth:`ClipDataset.open_indexed` returns an :class:`IndexedShardReader`: the records come
from ``manifest.parquet`` (no shard is opened up front); the first read of a shard scans its
tar headers once, with the same member guards as a streaming read (no absolute path, no
``..``, regular files only, no member twice), and keeps each member's byte offset. A read then
seeks to a sample's members and, when verifying, checks each against its record's sha256 and
the ``KEY.json`` bytes against the manifest's ``record_sha256`` (a 1.0 dataset without that
column: the record's fields against its manifest row).

:meth:`IndexedShardReader.verify_digests` checks the sha256 of a sample's raw members taken
elsewhere (e.g. by a loader that reads the tar itself, such as megatron-energon) against the
same manifest; :func:`member_digests` takes them.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic

from mugv_formats.errors import ChecksumError, CorruptShardError
from mugv_formats.shards import (
    MANIFEST,
    RECORD_SHA,
    H,
    R,
    check_member,
    row_to_record,
    sha256_hex,
    validate_record,
)

if TYPE_CHECKING:
    from mugv_formats.shards import ShardSetReader

RECORD_MEMBER = "json"


def member_digests(members: Mapping[str, Any]) -> dict[str, str]:
    """``ext -> sha256`` of a sample's raw members (``bytes`` values; other entries, e.g. a
    loader's ``__key__``, are skipped)."""
    return {
        ext: sha256_hex(bytes(data))
        for ext, data in members.items()
        if isinstance(data, bytes | bytearray | memoryview) and not ext.startswith("__")
    }


class IndexedShardReader(Generic[H, R]):
    """Random access to one dataset's samples; see the module docstring."""

    def __init__(self, dataset: ShardSetReader[H, R], *, verify: bool = True) -> None:
        self.dataset = dataset
        self.path: Path = dataset.path
        self.header: H = dataset.header
        self.verify = verify
        manifest = self.path / MANIFEST
        rows = dataset._read_manifest()
        self.records: list[R] = [
            row_to_record(r, dataset.record_type, where=f"{manifest} row {i}")
            for i, r in enumerate(rows)
        ]
        self._rows = {r["key"]: r for r in rows}
        self._index: dict[str, int] = {}
        for i, r in enumerate(self.records):
            if r.key in self._index:
                raise CorruptShardError(f"{manifest}: sample key {r.key!r} appears twice")
            if r.shard not in self.header.shards:
                raise CorruptShardError(
                    f"{manifest} row {i}: sample {r.key!r} names shard {r.shard!r}, which "
                    f"{self.path / 'dataset.json'} does not list"
                )
            self._index[r.key] = i
        self._offsets: dict[str, dict[str, tuple[int, int]]] = {}

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def index_of(self, key: str) -> int:
        """Manifest index of sample ``key`` (KeyError naming the dataset if absent)."""
        try:
            return self._index[key]
        except KeyError:
            raise KeyError(f"{self.path}: no sample {key!r} in {MANIFEST}") from None

    def record(self, key_or_index: str | int) -> R:
        """The manifest record of a sample, by key or index."""
        if isinstance(key_or_index, str):
            return self.records[self.index_of(key_or_index)]
        if isinstance(key_or_index, bool) or not isinstance(key_or_index, int):
            raise TypeError(f"sample key or index expected, got {key_or_index!r}")
        if not 0 <= key_or_index < len(self.records):
            raise IndexError(
                f"{self.path}: sample index {key_or_index} out of range (0..{len(self.records) - 1})"
            )
        return self.records[key_or_index]

    # -- tar offsets ---------------------------------------------------------------------
    def _shard_offsets(self, shard: str) -> dict[str, tuple[int, int]]:
        """``member name -> (data offset, size)`` of one shard, refusing unsafe members."""
        if shard in self._offsets:
            return self._offsets[shard]
        shard_path = self.path / shard
        offsets: dict[str, tuple[int, int]] = {}
        current = "<header>"
        try:
            file_size = shard_path.stat().st_size
            with tarfile.open(shard_path, "r:") as tar:
                for info in tar:
                    current = info.name
                    check_member(info, shard_path)
                    if info.name in offsets:
                        raise CorruptShardError(f"{shard_path}: member {info.name!r} appears twice")
                    if info.offset_data + info.size > file_size:
                        raise CorruptShardError(
                            f"{shard_path}: member {info.name!r} is truncated (needs bytes up to "
                            f"{info.offset_data + info.size}, the file has {file_size})"
                        )
                    offsets[info.name] = (info.offset_data, info.size)
        except CorruptShardError:
            raise
        except (tarfile.TarError, EOFError, OSError) as e:
            raise CorruptShardError(
                f"{shard_path}: unreadable or truncated at member {current!r}: {e}"
            ) from None
        self._offsets[shard] = offsets
        return offsets

    # -- reading -------------------------------------------------------------------------
    def load_members(self, key_or_index: str | int) -> tuple[R, dict[str, bytes]]:
        """``(record, members)`` of one sample: the record from the manifest and the raw bytes
        of every member it lists (``ext -> bytes``, the ``json`` record member excluded),
        each checked against its sha256 when verifying."""
        record = self.record(key_or_index)
        shard_path = self.path / record.shard
        offsets = self._shard_offsets(record.shard)
        exts = list(record.checksums)
        if self.verify:
            exts.append(RECORD_MEMBER)
        members: dict[str, bytes] = {}
        with open(shard_path, "rb") as f:
            for ext in exts:
                name = f"{record.key}.{ext}"
                if name not in offsets:
                    raise CorruptShardError(f"{shard_path}: member {name} is missing")
                offset, size = offsets[name]
                f.seek(offset)
                data = f.read(size)
                if len(data) != size:
                    raise CorruptShardError(
                        f"{shard_path}: member {name!r} is truncated ({len(data)} of {size} bytes)"
                    )
                members[ext] = data
        if self.verify:
            raw_record = members.pop(RECORD_MEMBER)
            self._check_record_member(record, raw_record, shard_path)
            self._check_digests(record, member_digests(members), shard_path)
        return record, members

    def _check_record_member(self, record: R, raw: bytes, shard_path: Path) -> None:
        where = f"{shard_path}: member {record.key}.json"
        stored = self._rows[record.key].get(RECORD_SHA)
        if stored:
            if sha256_hex(raw) != stored:
                raise ChecksumError(
                    f"{where} fails its sha256 check (stored in {MANIFEST} {stored[:12]}..., "
                    f"read {sha256_hex(raw)[:12]}...)"
                )
            return
        # a 1.0 dataset: no record checksum; its fields must agree with the manifest row
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CorruptShardError(f"{where}: not valid JSON ({e})") from None
        in_shard = validate_record(data, self.dataset.record_type, where=where)
        if in_shard.key != record.key:
            raise CorruptShardError(
                f"{where}: record key {in_shard.key!r} does not match member name"
            )
        self.dataset._check_agrees(in_shard, self._rows[record.key], where)

    def _check_digests(self, record: R, digests: Mapping[str, str], shard_path: Path) -> None:
        for ext, want in record.checksums.items():
            _compare_digest(shard_path, f"{record.key}.{ext}", want, digests.get(ext))

    def verify_digests(self, key: str, digests: Mapping[str, str]) -> R:
        """Check the sha256 of a sample's raw members, read by someone else (``ext -> hex``,
        see :func:`member_digests`; ``json`` is the ``KEY.json`` record member), against the
        manifest: the record member against ``record_sha256`` (when the dataset has it) and
        every member the record lists against its checksum. Returns the manifest record;
        raises :class:`ChecksumError` / :class:`CorruptShardError` naming shard and member."""
        record = self.record(key)
        shard_path = self.path / record.shard
        stored = self._rows[key].get(RECORD_SHA)
        if stored:
            _compare_digest(
                shard_path,
                f"{key}.json",
                stored,
                digests.get(RECORD_MEMBER),
                where=f"in {MANIFEST} ",
            )
        self._check_digests(record, digests, shard_path)
        return record

    def verify_members(self, key: str, members: Mapping[str, Any]) -> R:
        """:meth:`verify_digests` of raw member bytes (``ext -> bytes``)."""
        return self.verify_digests(key, member_digests(members))


def _compare_digest(
    shard_path: Path, member: str, want: str, got: str | None, *, where: str = ""
) -> None:
    """A member's sha256 ``got`` (None: the member is missing) against the stored ``want``
    (stored ``where``: in the record, or ``in manifest.parquet ``)."""
    if got is None:
        raise CorruptShardError(f"{shard_path}: member {member} is missing")
    if got != want:
        raise ChecksumError(
            f"{shard_path}: member {member} fails its sha256 check (stored {where}"
            f"{want[:12]}..., read {got[:12]}...)"
        )
