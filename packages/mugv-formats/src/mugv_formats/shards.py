"""Sharded tar datasets (WebDataset layout) shared by the clip- and latent-shard formats.

A dataset directory holds::

    shard-000000.tar          KEY.<ext> members, one group per sample (WebDataset layout)
    shard-000000.parquet      that shard's manifest rows; written after the tar is complete
    manifest.parquet          every sample's row, written on close
    dataset.json              format, version, producer, config, shard counts; written LAST

Each sample's ``KEY.json`` member is its record, including the sha256 of every other member;
the sha256 of the ``KEY.json`` bytes themselves is the manifest's ``record_sha256`` column
(format minor 1.1), and a reader checks that each record agrees with its manifest row.
Shards are written under a temporary name and renamed; a shard counts as complete only when
its ``.parquet`` sidecar exists, so a killed writer, reopened on the same directory, keeps the
complete shards, drops the partial one and continues numbering after the last complete shard.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import typing
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mugv_formats.atomic import atomic_open, atomic_write_bytes, atomic_write_text
from mugv_formats.errors import (
    ChecksumError,
    CorruptShardError,
    FormatError,
    MissingFieldError,
)
from mugv_formats.versioning import CURRENT_VERSIONS, check_format

DATASET_JSON = "dataset.json"
MANIFEST = "manifest.parquet"
_SHARD_RE = re.compile(r"^shard-(\d{6})\.tar$")
_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")
SCORE_PREFIX = "score."
#: manifest column holding the sha256 of each sample's ``KEY.json`` member (since 1.1)
RECORD_SHA = "record_sha256"


class DatasetHeader(BaseModel):
    """Common header of every sharded dataset (``dataset.json``)."""

    model_config = ConfigDict(extra="ignore")

    format: str
    version: str
    producer: str = Field(description="package and version that wrote the dataset")
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    config: dict[str, Any] = Field(default_factory=dict, description="config that made it")
    shards: dict[str, int] = Field(default_factory=dict, description="shard file -> samples")

    @property
    def num_samples(self) -> int:
        return sum(self.shards.values())


#: header fields a derived dataset never copies from its source (see :func:`derive_header`)
_HEADER_OWN_FIELDS = ("format", "version", "producer", "created", "config", "shards")


class ShardRecord(BaseModel):
    """Common fields of one sample's record (its ``KEY.json`` member and manifest row)."""

    model_config = ConfigDict(extra="ignore")

    key: str
    shard: str = ""
    checksums: dict[str, str] = Field(default_factory=dict, description="member ext -> sha256")

    @field_validator("key")
    @classmethod
    def _valid_key(cls, v: str) -> str:
        if not _KEY_RE.match(v):
            raise ValueError(f"sample key {v!r} must match {_KEY_RE.pattern} (no dots or slashes)")
        return v

    def for_rewrite(self, **changes: Any) -> Self:
        """A copy to write into another dataset: the fields a writer sets (``shard``,
        ``checksums``) cleared, every other field kept, ``changes`` applied (validated)."""
        data = self.model_dump()
        data.update(shard="", checksums={}, **changes)
        return type(self).model_validate(data)


H = TypeVar("H", bound=DatasetHeader)
R = TypeVar("R", bound=ShardRecord)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _dict_fields(record_type: type[BaseModel]) -> set[str]:
    out = set()
    for name, f in record_type.model_fields.items():
        ann = f.annotation
        if typing.get_origin(ann) is dict or ann is dict:
            out.add(name)
    return out


def record_to_row(record: ShardRecord) -> dict[str, Any]:
    """Flatten a record to one manifest row: ``scores`` become ``score.<name>`` columns,
    other dicts become JSON strings."""
    row: dict[str, Any] = {}
    for k, v in record.model_dump(mode="json").items():
        if k == "scores" and isinstance(v, dict):
            for name, value in v.items():
                row[SCORE_PREFIX + name] = value
        elif isinstance(v, dict):
            row[k] = json.dumps(v, sort_keys=True)
        else:
            row[k] = v
    return row


def row_to_record(row: Mapping[str, Any], record_type: type[R], *, where: str) -> R:
    """Inverse of :func:`record_to_row`."""
    data: dict[str, Any] = {}
    scores: dict[str, float] = {}
    dict_fields = _dict_fields(record_type)
    for k, v in row.items():
        if k.startswith(SCORE_PREFIX):
            if v is not None:
                scores[k[len(SCORE_PREFIX) :]] = v
        elif k in dict_fields and isinstance(v, str):
            data[k] = json.loads(v)
        else:
            data[k] = v
    if "scores" in record_type.model_fields:
        data["scores"] = scores
    return validate_record(data, record_type, where=where)


def validate_record(data: Any, record_type: type[R], *, where: str) -> R:
    try:
        return record_type.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"field {'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in e.errors()
        )
        raise MissingFieldError(f"{where}: invalid {record_type.__name__}: {problems}") from None


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    columns: list[str] = []
    for r in rows:
        for k in r:
            if k not in columns:
                columns.append(k)
    return pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows])


def write_parquet_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.BytesIO()
    pq.write_table(rows_to_table(rows), buf)
    atomic_write_bytes(path, buf.getvalue())


def read_header(path: Path, expected_format: str, header_type: type[H]) -> H:
    """Read and check ``dataset.json`` of the dataset at ``path``."""
    meta = path / DATASET_JSON
    if not meta.is_file():
        raise FormatError(
            f"{path}: no {DATASET_JSON}; not a {expected_format} dataset, or its writer did "
            "not finish (reopen it with the writer to resume)"
        )
    try:
        data = json.loads(meta.read_text())
    except json.JSONDecodeError as e:
        raise FormatError(f"{meta}: not valid JSON ({e})") from None
    for field in ("format", "version"):
        if field not in data:
            raise MissingFieldError(f"{meta}: missing field {field!r}")
    check_format(data["format"], data["version"], expected_format=expected_format, where=meta)
    header = validate_record(data, header_type, where=str(meta))
    for name in header.shards:
        check_shard_name(name, meta)
    return header


def check_shard_name(name: str, where: str | Path) -> None:
    """A shard named in a header must be a plain file name inside the dataset directory."""
    if not name or os.path.isabs(name) or name.startswith(("/", "\\")):
        raise CorruptShardError(f"{where}: shard {name!r} has an absolute path; refused")
    parts = re.split(r"[/\\]", name)
    if ".." in parts:
        raise CorruptShardError(f"{where}: shard {name!r} escapes the dataset with '..'; refused")
    if len(parts) != 1 or name in (".", ""):
        raise CorruptShardError(
            f"{where}: shard {name!r} is not a plain file name in the dataset directory; refused"
        )


class ShardSetWriter(Generic[H, R]):
    """Writes samples into numbered tar shards; resumable; see the module docstring."""

    def __init__(
        self, out_dir: str | Path, header: H, record_type: type[R], *, samples_per_shard: int = 64
    ) -> None:
        if samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.header = header
        self.record_type = record_type
        self.samples_per_shard = samples_per_shard
        self._done: dict[str, int] = {}  # complete shard -> samples (records stay on disk)
        self._keys: set[str] = set()
        self._tar: tarfile.TarFile | None = None
        self._tmp_path: Path | None = None
        self._rows: list[R] = []
        self._record_sha: dict[str, str] = {}  # key -> sha256 of its KEY.json member
        self._closed = False
        self._recover()
        self._recovered = list(self._done)
        self._keys_at_open = frozenset(self._keys)

    # -- resume ---------------------------------------------------------------------------
    def _recover(self) -> None:
        for p in self.out_dir.iterdir():
            if p.name.startswith(".") and p.name.endswith(".tmp"):
                p.unlink()  # partial shard or file of a killed writer
        for p in sorted(self.out_dir.glob("shard-*.tar")):
            if not _SHARD_RE.match(p.name):
                continue
            side = p.with_suffix(".parquet")
            if not side.exists():
                p.unlink()  # tar renamed but sidecar missing: incomplete shard
                continue
            rows = pq.read_table(side).to_pylist()
            for r in rows:  # every row must still be a valid record
                row_to_record(r, self.record_type, where=str(side))
            self._done[p.name] = len(rows)
            self._keys.update(r["key"] for r in rows)

    def existing_records(self) -> list[R]:
        """Records of the complete shards found when the writer was opened (for resume),
        read back from their sidecars."""
        return [r for n in sorted(self._recovered) for r in self._shard_records(n)]

    def existing_keys(self) -> set[str]:
        """Keys of the samples in the complete shards found when the writer was opened."""
        return set(self._keys_at_open)

    def _shard_records(self, name: str) -> list[R]:
        side = (self.out_dir / name).with_suffix(".parquet")
        rows = pq.read_table(side).to_pylist()
        out = []
        for r in rows:
            if r.get(RECORD_SHA):
                self._record_sha[r["key"]] = r[RECORD_SHA]
            out.append(row_to_record(r, self.record_type, where=str(side)))
        return out

    @property
    def num_written(self) -> int:
        return len(self._keys)

    def _next_shard_name(self) -> str:
        used = [int(_SHARD_RE.match(n).group(1)) for n in self._done]  # type: ignore[union-attr]
        return f"shard-{(max(used) + 1) if used else 0:06d}.tar"

    # -- writing --------------------------------------------------------------------------
    def write_sample(self, record: R, members: Mapping[str, bytes]) -> R:
        """Add one sample. ``members`` maps extension (e.g. ``"mp4"``) to bytes; the record
        becomes the ``json`` member with checksums of the others. Returns the stored record."""
        if self._closed:
            raise RuntimeError(f"{self.out_dir}: writer is closed")
        if record.key in self._keys:
            raise ValueError(f"{self.out_dir}: duplicate sample key {record.key!r}")
        for ext in members:
            if ext == "json" or not re.match(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$", ext):
                raise ValueError(f"invalid member extension {ext!r} for sample {record.key!r}")
        if self._tar is None:
            name = self._next_shard_name()
            self._tmp_path = self.out_dir / f".{name}.tmp"
            self._tar = tarfile.open(self._tmp_path, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
            self._shard_name = name
            self._rows = []
        stored = record.model_copy(
            update={
                "shard": self._shard_name,
                "checksums": {ext: sha256_hex(data) for ext, data in members.items()},
            }
        )
        all_members = dict(members)
        all_members["json"] = stored.model_dump_json().encode()
        self._record_sha[record.key] = sha256_hex(all_members["json"])
        for ext, data in all_members.items():
            info = tarfile.TarInfo(f"{record.key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            self._tar.addfile(info, io.BytesIO(data))
        self._rows.append(stored)
        self._keys.add(record.key)
        if len(self._rows) >= self.samples_per_shard:
            self._finish_shard()
        return stored

    def _finish_shard(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        assert self._tmp_path is not None
        with open(self._tmp_path, "rb") as f:
            os.fsync(f.fileno())
        final = self.out_dir / self._shard_name
        os.replace(self._tmp_path, final)
        write_parquet_atomic(final.with_suffix(".parquet"), [self._row(r) for r in self._rows])
        self._done[self._shard_name] = len(self._rows)
        for r in self._rows:  # kept in the sidecar now
            self._record_sha.pop(r.key, None)
        self._tar, self._tmp_path, self._rows = None, None, []

    def close(self) -> H:
        """Finish the open shard, write ``manifest.parquet`` then ``dataset.json``."""
        if self._closed:
            return self.header
        self._finish_shard()
        names = sorted(self._done)
        self._write_manifest(names)
        self.header = self.header.model_copy(update={"shards": dict(sorted(self._done.items()))})
        self._finalize(self.out_dir)
        atomic_write_text(self.out_dir / DATASET_JSON, self.header.model_dump_json(indent=2))
        self._closed = True
        return self.header

    def _write_manifest(self, names: list[str]) -> None:
        """``manifest.parquet`` from the shards' sidecars, one shard in memory at a time:
        the same table as :func:`rows_to_table` of every row (columns in order of first
        appearance, missing values null, types unified), written row group by row group."""

        def table(name: str) -> pa.Table:
            t = rows_to_table([self._row(r) for r in self._shard_records(name)])
            self._record_sha.clear()
            return t

        schemas = [table(n).schema for n in names]
        if not schemas:
            write_parquet_atomic(self.out_dir / MANIFEST, [])
            return
        columns: list[str] = []
        for sch in schemas:
            columns += [c for c in sch.names if c not in columns]
        unified = pa.unify_schemas(schemas, promote_options="permissive")
        schema = pa.schema([unified.field(c) for c in columns])
        with atomic_open(self.out_dir / MANIFEST) as f, pq.ParquetWriter(f, schema) as w:
            for n in names:
                t = table(n)
                w.write_table(
                    pa.table(
                        {
                            c: t.column(c) if c in t.column_names else pa.nulls(len(t))
                            for c in columns
                        }
                    ).cast(schema)
                )

    def _row(self, record: R) -> dict[str, Any]:
        row = record_to_row(record)
        if record.key in self._record_sha:  # absent only for samples of a resumed 1.0 dataset
            row[RECORD_SHA] = self._record_sha[record.key]
        return row

    def _finalize(self, out_dir: Path) -> None:
        """Hook for formats that add files before ``dataset.json`` (e.g. energon metadata)."""

    def abort(self) -> None:
        """Drop the open shard without finishing the dataset (complete shards stay)."""
        if self._tar is not None:
            self._tar.close()
            if self._tmp_path is not None and self._tmp_path.exists():
                self._tmp_path.unlink()
            self._tar = None
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def check_member(info: tarfile.TarInfo, shard: Path) -> None:
    """Refuse an unsafe shard member: an absolute path, ``..``, or anything but a regular
    file (links, devices); CorruptShardError naming shard and member."""
    _check_member_name(info.name, shard)
    if not info.isfile():
        raise CorruptShardError(
            f"{shard}: member {info.name!r} is not a regular file (type "
            f"{info.type!r}); links and devices are refused"
        )


def _check_member_name(name: str, shard: Path) -> None:
    if name.startswith("/") or name.startswith("\\") or os.path.isabs(name):
        raise CorruptShardError(f"{shard}: member {name!r} has an absolute path; refused")
    parts = re.split(r"[/\\]", name)
    if ".." in parts:
        raise CorruptShardError(f"{shard}: member {name!r} escapes the shard with '..'; refused")


def iter_shard_members(shard: Path) -> Iterator[tuple[str, str, bytes]]:
    """Yield ``(key, ext, data)`` for each member of ``shard``, refusing unsafe members and
    turning truncation or corruption into :class:`CorruptShardError` naming shard and member."""
    current = "<header>"
    try:
        with tarfile.open(shard, "r|") as tar:
            for info in tar:
                current = info.name
                check_member(info, shard)
                base = info.name.rsplit("/", 1)[-1]
                if "." not in base:
                    raise CorruptShardError(f"{shard}: member {info.name!r} has no extension")
                key, ext = base.split(".", 1)
                f = tar.extractfile(info)
                data = f.read() if f is not None else b""
                if len(data) != info.size:
                    raise CorruptShardError(
                        f"{shard}: member {info.name!r} is truncated ({len(data)} of {info.size} bytes)"
                    )
                yield key, ext, data
    except CorruptShardError:
        raise
    except (tarfile.TarError, EOFError, OSError) as e:
        raise CorruptShardError(
            f"{shard}: unreadable or truncated at member {current!r}: {e}"
        ) from None


class ShardSetReader(Generic[H, R]):
    """Reads a dataset written by :class:`ShardSetWriter`, verifying checksums."""

    def __init__(
        self, path: str | Path, expected_format: str, header_type: type[H], record_type: type[R]
    ) -> None:
        self.path = Path(path)
        self.record_type = record_type
        self.header: H = read_header(self.path, expected_format, header_type)
        self._manifest_rows: dict[str, dict[str, Any]] | None = None
        for name in self.header.shards:
            if not (self.path / name).is_file():
                raise CorruptShardError(
                    f"{self.path / name}: shard listed in {DATASET_JSON} is missing"
                )

    def __len__(self) -> int:
        return self.header.num_samples

    @property
    def shard_paths(self) -> list[Path]:
        return [self.path / n for n in self.header.shards]

    def _read_manifest(self) -> list[dict[str, Any]]:
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            raise FormatError(f"{manifest}: manifest missing")
        try:
            return pq.read_table(manifest).to_pylist()
        except (pa.ArrowInvalid, OSError) as e:
            raise CorruptShardError(f"{manifest}: unreadable parquet ({e})") from None

    def manifest_row(self, key: str) -> dict[str, Any] | None:
        """The manifest row of sample ``key`` (None if the manifest lacks it)."""
        if self._manifest_rows is None:
            self._manifest_rows = {r["key"]: r for r in self._read_manifest()}
        return self._manifest_rows.get(key)

    def records(self) -> list[R]:
        """All records from ``manifest.parquet`` (no shard is opened)."""
        manifest = self.path / MANIFEST
        rows = self._read_manifest()
        return [
            row_to_record(r, self.record_type, where=f"{manifest} row {i}")
            for i, r in enumerate(rows)
        ]

    def iter_shard(
        self, shard: str | Path, *, verify: bool = True
    ) -> Iterator[tuple[R, dict[str, bytes]]]:
        """Yield ``(record, members)`` of one shard; members maps ext -> bytes (json excluded)."""
        shard_path = self.path / shard if not Path(shard).is_absolute() else Path(shard)
        pending_key: str | None = None
        members: dict[str, bytes] = {}
        for key, ext, data in iter_shard_members(shard_path):
            if pending_key is not None and key != pending_key:
                yield self._finish_sample(shard_path, pending_key, members, verify)
                members = {}
            pending_key = key
            if ext in members:
                raise CorruptShardError(f"{shard_path}: member {key}.{ext} appears twice")
            members[ext] = data
        if pending_key is not None:
            yield self._finish_sample(shard_path, pending_key, members, verify)

    def _finish_sample(
        self, shard: Path, key: str, members: dict[str, bytes], verify: bool
    ) -> tuple[R, dict[str, bytes]]:
        where = f"{shard}: member {key}.json"
        if "json" not in members:
            raise CorruptShardError(f"{shard}: sample {key!r} has no {key}.json record member")
        raw = members.pop("json")
        row = self.manifest_row(key) if verify else None
        if verify:
            if row is None:
                raise CorruptShardError(f"{where}: sample {key!r} is not in {MANIFEST}")
            stored = row.get(RECORD_SHA)
            if stored and sha256_hex(raw) != stored:
                raise ChecksumError(
                    f"{where} fails its sha256 check (stored in {MANIFEST} {stored[:12]}..., "
                    f"read {sha256_hex(raw)[:12]}...)"
                )
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise CorruptShardError(f"{where}: not valid JSON ({e})") from None
        record = validate_record(data, self.record_type, where=where)
        if record.key != key:
            raise CorruptShardError(
                f"{where}: record key {record.key!r} does not match member name"
            )
        if row is not None:
            self._check_agrees(record, row, where)
        for ext, digest in record.checksums.items():
            if ext not in members:
                raise CorruptShardError(f"{shard}: member {key}.{ext} is missing")
            if verify and sha256_hex(members[ext]) != digest:
                raise ChecksumError(
                    f"{shard}: member {key}.{ext} fails its sha256 check (stored {digest[:12]}..., "
                    f"read {sha256_hex(members[ext])[:12]}...)"
                )
        return record, members

    def _check_agrees(self, record: R, row: Mapping[str, Any], where: str) -> None:
        """The record in the shard and its manifest row must hold the same values."""
        listed = row_to_record(
            row, self.record_type, where=f"{self.path / MANIFEST} row {record.key!r}"
        )
        got, want = record.model_dump(mode="json"), listed.model_dump(mode="json")
        for field in got:
            if got[field] != want.get(field):
                raise ChecksumError(
                    f"{where}: field {field!r} is {got[field]!r}, {MANIFEST} says "
                    f"{want.get(field)!r}; the record was changed"
                )

    def iter_samples(self, *, verify: bool = True) -> Iterator[tuple[R, dict[str, bytes]]]:
        for name in self.header.shards:
            yield from self.iter_shard(name, verify=verify)


def derive_header(
    source: H,
    *,
    producer: str,
    config: Mapping[str, Any] | None,
    **changes: Any,
) -> H:
    """The header of a dataset made from ``source``'s (same type): every field of ``source``
    is kept (so a field added to the format later is carried too) except the ones a new dataset
    owns: the current format version, ``producer``, ``config``, a new ``created`` time and no
    shards yet; ``changes`` override kept fields. The result is validated."""
    for name in ("format", "version", "created", "shards"):
        if name in changes:
            raise ValueError(f"derive_header: {name!r} is set by the new dataset, not by changes")
    data = source.model_dump()
    for name in _HEADER_OWN_FIELDS:
        data.pop(name, None)
    data.update(changes)
    return new_header(type(source), source.format, producer=producer, config=config, **data)


def new_header(
    header_type: type[H],
    fmt: str,
    *,
    producer: str,
    config: Mapping[str, Any] | None,
    **fields: Any,
) -> H:
    return header_type(
        format=fmt,
        version=CURRENT_VERSIONS[fmt],
        producer=producer,
        config=dict(config or {}),
        **fields,
    )
