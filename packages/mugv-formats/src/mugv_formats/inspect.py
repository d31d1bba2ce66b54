"""Describe what a shard, dataset or checkpoint folder holds (``mugv-formats inspect``)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from mugv_formats.errors import FormatError
from mugv_formats.versioning import (
    CLIP_SHARDS_FORMAT,
    DIT_EXPORT_FORMAT,
    LATENT_SHARDS_FORMAT,
    PREFERENCE_FORMAT,
    VAE_CHECKPOINT_FORMAT,
)


def describe(path: str | Path, *, verify: bool = False) -> dict[str, Any]:
    """Return a JSON-able description of ``path``; ``verify`` reads every sample/checksum."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_file() and path.suffix == ".tar":
        return _describe_tar(path)
    if (path / "dataset.json").is_file():
        fmt = _read_json(path / "dataset.json").get("format")
        if fmt == CLIP_SHARDS_FORMAT:
            return _describe_clips(path, verify)
        if fmt == LATENT_SHARDS_FORMAT:
            return _describe_latents(path, verify)
        if fmt == PREFERENCE_FORMAT:
            from mugv_formats.preference import read_preference_data

            header, items = read_preference_data(path)
            return {"path": str(path), **header.model_dump(), "items_read": len(items)}
        raise FormatError(f"{path / 'dataset.json'}: unknown format {fmt!r}")
    if (path / "config.json").is_file():
        fmt = _read_json(path / "config.json").get("format")
        if fmt in (VAE_CHECKPOINT_FORMAT, DIT_EXPORT_FORMAT):
            return _describe_weights(path, fmt, verify)
        raise FormatError(f"{path / 'config.json'}: unknown format {fmt!r}")
    raise FormatError(
        f"{path}: not a mugv shard (.tar), dataset (dataset.json) or weights folder (config.json)"
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise FormatError(f"{path}: top level is {type(data).__name__}, not an object")
    return data


def _describe_tar(path: Path) -> dict[str, Any]:
    from mugv_formats.shards import iter_shard_members

    members = [(k, e, len(d)) for k, e, d in iter_shard_members(path)]
    return {
        "path": str(path),
        "kind": "tar shard",
        "samples": len({k for k, _, _ in members}),
        "members": len(members),
        "bytes": sum(n for _, _, n in members),
        "extensions": dict(Counter(e for _, e, _ in members)),
    }


def _describe_clips(path: Path, verify: bool) -> dict[str, Any]:
    from mugv_formats.clips import ClipDataset

    ds = ClipDataset(path)
    recs = ds.records()
    scores = sorted({s for r in recs for s in r.scores})
    out: dict[str, Any] = {
        "path": str(path),
        "kind": "clip shards",
        **ds.header.model_dump(exclude={"config"}),
        "num_clips": len(recs),
        "total_seconds": round(sum(r.duration_s for r in recs), 3),
        "scores": {s: _stats([r.scores[s] for r in recs if s in r.scores]) for s in scores},
        "captioned": sum(1 for r in recs if r.caption),
    }
    if verify:
        out["verified_clips"] = sum(1 for _ in ds)
    return out


def _describe_latents(path: Path, verify: bool) -> dict[str, Any]:
    from mugv_formats.latents import LatentDataset

    ds = LatentDataset(path)
    recs = ds.records()
    out: dict[str, Any] = {
        "path": str(path),
        "kind": "latent shards",
        **ds.header.model_dump(exclude={"config"}),
        "num_samples": len(recs),
        "latent_shapes": dict(Counter("x".join(map(str, r.latent_shape)) for r in recs)),
        "with_text": sum(1 for r in recs if r.text_length is not None),
    }
    if verify:
        from mugv_formats.energon import check_nv_meta

        check_nv_meta(path)  # energon would import and run a callable named there
        out["verified_samples"] = sum(1 for _ in ds)
        out["energon_metadata"] = "ok"
    return out


def _describe_weights(path: Path, fmt: str, verify: bool) -> dict[str, Any]:
    from mugv_formats.weights import load_weights_folder, read_weights_config

    meta = read_weights_config(path, format=fmt)
    out = {
        "path": str(path),
        "kind": "weights folder",
        "format": meta["format"],
        "version": meta["version"],
        "architecture": meta["architecture"],
        "producer": meta.get("producer", ""),
        "config": meta["config"],
        "files": sorted(meta.get("files", {})),
    }
    try:
        import torch  # noqa: F401
    except ImportError:
        return out
    wf = load_weights_folder(path, format=fmt, verify=verify)
    out["num_tensors"] = len(wf.state_dict)
    out["num_parameters"] = wf.num_parameters
    out["dtypes"] = dict(Counter(str(t.dtype) for t in wf.state_dict.values()))
    return out


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    v = sorted(values)
    return {"min": v[0], "median": v[len(v) // 2], "max": v[-1], "count": len(v)}
