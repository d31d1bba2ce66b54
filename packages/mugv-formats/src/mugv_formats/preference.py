"""Preference data (format ``mugv.preference-data``) over a latent-shard dataset.

DPO data are pairs of latent-sample keys (chosen, rejected) for the same prompt; KTO data are
single keys labelled desirable or not. Stored as ``preference.parquet`` + ``dataset.json``
naming the latent dataset (path and producer) the keys refer to.
"""

from __future__ import annotations

import io
import json
from collections.abc import Container
from pathlib import Path
from typing import Literal

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mugv_formats.atomic import atomic_write_bytes, atomic_write_text
from mugv_formats.errors import FormatError
from mugv_formats.shards import DatasetHeader, read_header, rows_to_table, validate_record
from mugv_formats.versioning import CURRENT_VERSIONS, PREFERENCE_FORMAT

PREFERENCE_FILE = "preference.parquet"


class PreferencePair(BaseModel):
    """A DPO pair: two latent samples for the same caption, one preferred."""

    model_config = ConfigDict(extra="ignore")
    chosen: str = Field(description="latent-sample key of the preferred video")
    rejected: str = Field(description="latent-sample key of the dispreferred video")
    caption: str = ""
    label_source: str = Field(default="", description="who/what produced the label")
    weight: float = Field(default=1.0, ge=0)

    @model_validator(mode="after")
    def _distinct(self) -> PreferencePair:
        if self.chosen == self.rejected:
            raise ValueError(f"chosen and rejected are the same sample {self.chosen!r}")
        return self


class KTOSample(BaseModel):
    """A KTO sample: one latent sample labelled desirable (pass) or undesirable (fail)."""

    model_config = ConfigDict(extra="ignore")
    key: str
    desirable: bool
    caption: str = ""
    label_source: str = ""
    weight: float = Field(default=1.0, ge=0)


class PreferenceHeader(DatasetHeader):
    format: str = PREFERENCE_FORMAT
    kind: Literal["dpo", "kto"]
    latent_dataset: str = Field(description="path of the latent dataset the keys refer to")
    num_items: int = 0


def write_preference_data(
    path: str | Path,
    items: list[PreferencePair] | list[KTOSample],
    *,
    latent_dataset: str | Path,
    producer: str,
    config: dict | None = None,
) -> PreferenceHeader:
    if not items:
        raise ValueError(f"{path}: no preference items to write")
    kinds = {type(i) for i in items}
    if len(kinds) != 1 or kinds.pop() not in (PreferencePair, KTOSample):
        raise ValueError("items must be all PreferencePair (DPO) or all KTOSample (KTO)")
    kind = "dpo" if isinstance(items[0], PreferencePair) else "kto"
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    pq.write_table(rows_to_table([i.model_dump() for i in items]), buf)
    atomic_write_bytes(path / PREFERENCE_FILE, buf.getvalue())
    header = PreferenceHeader(
        version=CURRENT_VERSIONS[PREFERENCE_FORMAT],
        producer=producer,
        config=config or {},
        kind=kind,
        latent_dataset=str(latent_dataset),
        num_items=len(items),
    )
    atomic_write_text(path / "dataset.json", json.dumps(header.model_dump(), indent=2))
    return header


def read_preference_data(
    path: str | Path,
) -> tuple[PreferenceHeader, list[PreferencePair] | list[KTOSample]]:
    path = Path(path)
    header = read_header(path, PREFERENCE_FORMAT, PreferenceHeader)
    f = path / PREFERENCE_FILE
    if not f.is_file():
        raise FormatError(f"{f}: missing")
    item_type = PreferencePair if header.kind == "dpo" else KTOSample
    rows = pq.read_table(f).to_pylist()
    items = [validate_record(r, item_type, where=f"{f} row {i}") for i, r in enumerate(rows)]
    return header, items


def check_keys_exist(
    items: list[PreferencePair] | list[KTOSample],
    known_keys: Container[str],
    *,
    where: str,
    dataset: str = "the latent dataset",
) -> None:
    """Raise ``FormatError`` naming the first item whose latent sample key (a pair's chosen or
    rejected, a KTO sample's key) is not in ``known_keys``, the keys of the latent dataset
    ``dataset`` that the preference data ``where`` refers to. Call it after
    :func:`read_preference_data` once that latent dataset is open."""
    for i, item in enumerate(items):
        keys = [item.chosen, item.rejected] if isinstance(item, PreferencePair) else [item.key]
        for k in keys:
            if k not in known_keys:
                raise FormatError(f"{where} item {i}: latent sample {k!r} not in {dataset}")
