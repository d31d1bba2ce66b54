"""megatron-energon metadata for latent shards.

``write_nv_meta`` writes the plain-YAML/JSON part of ``.nv-meta`` (dataset class, split,
shard counts) without needing energon. ``index_for_energon`` runs energon's own preparation
API (tar indices and sample index) when megatron-energon is installed (``mugv-formats[energon]``,
always present with mugv-dit), so the directory loads with ``megatron.energon.get_train_dataset``
and its savable loaders.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from collections.abc import Mapping
from pathlib import Path

from mugv_formats.atomic import atomic_write_text

NV_META = ".nv-meta"


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
