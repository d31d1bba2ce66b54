"""megatron-energon metadata for latent shards.

``write_nv_meta`` writes the plain-YAML/JSON part of ``.nv-meta`` (dataset class, split,
shard counts) without needing energon. ``index_for_energon`` runs energon's own preparation
API (tar indices and sample index) when megatron-energon is installed (``mugv-formats[energon]``,
always present with mugv-dit), so the directory loads with ``megatron.energon.get_train_dataset``
and its savable loaders.

``check_nv_meta`` is the gate in front of energon: energon's ``dataset.yaml`` may name any
Python class or function (``__module__``/``__class__``/``__function__``, ``sample_loader``,
``part_filter``) and energon imports and runs it. Only the metadata written here (and the
indices energon's preparation adds) is accepted, read with the bounded safe YAML loader.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from collections.abc import Mapping
from pathlib import Path

import yaml

from mugv_formats.atomic import atomic_write_text
from mugv_formats.config_loading import ConfigError, safe_load_bounded
from mugv_formats.errors import FormatError

NV_META = ".nv-meta"
#: dataset.yaml exactly as write_nv_meta writes it.
DATASET_YAML = {"__module__": "megatron.energon", "__class__": "CrudeWebdataset"}
#: Every file .nv-meta may hold: ours, and what energon's preparation writes.
_NV_META_FILES = {
    "dataset.yaml",
    "split.yaml",
    ".info.json",
    ".info.yaml",
    "index.sqlite",
    "index.uuid",
}
_SPLIT_PARTS = {"train", "val", "test"}


class NvMetaError(FormatError):
    """``.nv-meta`` holds something other than the metadata mugv writes."""


def energon_available() -> bool:
    return (
        importlib.util.find_spec("megatron") is not None
        and importlib.util.find_spec("megatron.energon") is not None
    )


def write_nv_meta(path: Path, shard_counts: Mapping[str, int]) -> None:
    meta = path / NV_META
    meta.mkdir(exist_ok=True)
    # CrudeWebdataset: samples arrive as dicts of raw members; the DiT's cooker decodes them.
    atomic_write_text(
        meta / "dataset.yaml", "__module__: megatron.energon\n__class__: CrudeWebdataset\n"
    )
    split = {"split_parts": {"train": sorted(shard_counts), "val": [], "test": []}, "exclude": []}
    atomic_write_text(meta / "split.yaml", json.dumps(split, indent=1) + "\n")  # JSON is YAML
    atomic_write_text(
        meta / ".info.json", json.dumps({"shard_counts": dict(shard_counts)}, indent=1)
    )


def index_for_energon(path: Path, shards: list[str], *, workers: int = 1) -> None:
    """Build energon's tar and sample indices with energon's own preparation API."""
    if not energon_available():
        raise ImportError(
            "megatron-energon is not installed; install mugv-formats[energon] to index "
            f"{path} for energon"
        )
    from megatron.energon.flavors.webdataset.prepare import WebdatasetPreparator

    log = io.StringIO()  # energon prints progress lines; keep them out of the user's output
    with contextlib.redirect_stdout(log):
        WebdatasetPreparator.prepare_dataset(
            path,
            list(shards),
            split_parts_patterns=[("train", ".*")],
            workers=workers,
            shuffle_seed=None,
        )


def _load(path: Path) -> object:
    try:
        return safe_load_bounded(path.read_bytes(), path)
    except ConfigError as e:
        raise NvMetaError(str(e)) from None
    except yaml.YAMLError as e:
        raise NvMetaError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None


def _check_shard_list(value: object, where: str) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise NvMetaError(f"{where}: must be a list of shard names, got {value!r:.80}")
    for name in value:
        if "/" in name or "\\" in name or name.startswith(".") or ":" in name:
            raise NvMetaError(f"{where}: {name!r} is not a shard name of this folder")


def check_nv_meta(path: str | Path) -> None:
    """Accept ``PATH/.nv-meta`` only as mugv writes it; raise :class:`NvMetaError` (one line
    naming the file and the key) otherwise. A dataset without ``.nv-meta`` passes (energon
    then refuses it itself). Checked: no symbolic links; only the known file names;
    ``dataset.yaml`` is exactly ``__module__: megatron.energon`` and ``__class__:
    CrudeWebdataset``; ``split.yaml`` holds ``split_parts`` (train/val/test: lists of plain
    shard names) and an optional ``exclude`` list, nothing else; ``.info.yaml``/``.info.json``
    hold only ``shard_counts`` of integers (and energon's ``energon_version``)."""
    path = Path(path)
    meta = path / NV_META
    if meta.is_symlink():
        raise NvMetaError(f"{meta} is a symbolic link; refusing energon metadata from elsewhere")
    if not meta.exists():
        return
    if not meta.is_dir():
        raise NvMetaError(f"{meta} is not a folder")
    for entry in sorted(meta.iterdir()):
        if entry.is_symlink():
            raise NvMetaError(f"{entry} is a symbolic link; energon metadata must be plain files")
        if entry.name not in _NV_META_FILES:
            raise NvMetaError(
                f"{entry}: unexpected file in {NV_META} (mugv writes only "
                f"{', '.join(sorted(_NV_META_FILES))}); energon could load code from it"
            )
        if not entry.is_file():
            raise NvMetaError(f"{entry} is not a regular file")
    ds_yaml = meta / "dataset.yaml"
    if ds_yaml.exists():
        data = _load(ds_yaml)
        if not isinstance(data, dict):
            raise NvMetaError(f"{ds_yaml}: top level must be a mapping")
        for key, value in data.items():
            if DATASET_YAML.get(key) != value:
                raise NvMetaError(
                    f"{ds_yaml}: key {key!r} = {value!r:.80} is not allowed (mugv writes only "
                    "__module__: megatron.energon, __class__: CrudeWebdataset)"
                )
        for key in DATASET_YAML:
            if key not in data:
                raise NvMetaError(f"{ds_yaml}: key {key!r} missing")
    split = meta / "split.yaml"
    if split.exists():
        data = _load(split)
        if not isinstance(data, dict):
            raise NvMetaError(f"{split}: top level must be a mapping")
        for key in data:
            if key not in ("split_parts", "exclude"):
                raise NvMetaError(f"{split}: key {key!r} is not allowed")
        parts = data.get("split_parts")
        if not isinstance(parts, dict):
            raise NvMetaError(f"{split}: key 'split_parts' must be a mapping")
        for part, names in parts.items():
            if part not in _SPLIT_PARTS:
                raise NvMetaError(f"{split}: key split_parts.{part!r} is not allowed")
            _check_shard_list(names, f"{split}: key split_parts.{part}")
        if "exclude" in data:
            exclude = data["exclude"]
            if not isinstance(exclude, list) or not all(isinstance(v, str) for v in exclude):
                raise NvMetaError(f"{split}: key 'exclude' must be a list of strings")
    for name in (".info.yaml", ".info.json"):
        info = meta / name
        if not info.exists():
            continue
        data = _load(info)  # JSON is YAML
        if not isinstance(data, dict):
            raise NvMetaError(f"{info}: top level must be a mapping")
        for key, value in data.items():
            if key == "energon_version" and (value is None or isinstance(value, str)):
                continue
            if key != "shard_counts":
                raise NvMetaError(f"{info}: key {key!r} is not allowed")
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and type(v) is int for k, v in value.items()
            ):
                raise NvMetaError(f"{info}: key 'shard_counts' must map shard names to integers")
