"""Weights folders: VAE checkpoints (``mugv.vae-checkpoint``) and DiT inference exports
(``mugv.dit-export``).

A folder holds ``config.json`` (format, version, architecture, the model config, extra
metadata such as latent statistics, and the sha256 of every weights file) and safetensors
weights: ``model.safetensors``, or ``model-00001-of-0000N.safetensors`` shards with
``model.safetensors.index.json`` when larger than ``max_shard_bytes``. The folder is written
under a temporary name and renamed, with ``config.json`` written last inside it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mugv_formats.atomic import atomic_replace_dir, atomic_write_text, umask
from mugv_formats.errors import ChecksumError, CorruptShardError, FormatError, MissingFieldError
from mugv_formats.versioning import CURRENT_VERSIONS, check_format

CONFIG_JSON = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


@dataclass
class WeightsFolder:
    """A loaded weights folder."""

    path: Path
    format: str
    version: str
    architecture: str
    config: dict[str, Any]
    extra: dict[str, Any]
    state_dict: dict[str, Any] = field(repr=False)

    @property
    def num_parameters(self) -> int:
        return sum(int(t.numel()) for t in self.state_dict.values())


def _nbytes(t: Any) -> int:
    return int(t.numel() * t.element_size()) if hasattr(t, "element_size") else int(t.nbytes)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _plan_shards(state_dict: Mapping[str, Any], max_shard_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    for name in state_dict:
        n = _nbytes(state_dict[name])
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    return shards


def save_weights_folder(
    path: str | Path,
    *,
    format: str,
    architecture: str,
    config: Mapping[str, Any],
    state_dict: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    max_shard_bytes: int = 5 << 30,
    producer: str | None = None,
) -> Path:
    """Write a weights folder atomically. ``state_dict`` holds torch tensors (contiguous copies
    are made as needed; shared storage is duplicated, as safetensors requires)."""
    if format not in CURRENT_VERSIONS:
        raise ValueError(f"unknown weights format {format!r}; known: {sorted(CURRENT_VERSIONS)}")
    import torch
    from safetensors.torch import save_file

    tensors = {}
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"state_dict[{k!r}] is {type(v).__name__}, expected a torch.Tensor")
        tensors[k] = (
            v.detach().to("cpu").contiguous().clone()
            if v.device.type != "cpu" or not v.is_contiguous()
            else v.detach()
        )
    # safetensors refuses tensors sharing memory: clone those.
    seen: dict[tuple[int, int], str] = {}
    for k, v in tensors.items():
        sig = (v.untyped_storage().data_ptr(), v.storage_offset())
        if v.numel() and sig in seen:
            tensors[k] = v.clone()
        seen[sig] = k
    path = Path(path)
    plan = _plan_shards(tensors, max_shard_bytes)
    with atomic_replace_dir(path) as tmp:
        files: dict[str, str] = {}
        if len(plan) == 1:
            save_file(tensors, str(tmp / SINGLE_FILE), metadata={"format": "pt"})
            files[SINGLE_FILE] = _sha256_file(tmp / SINGLE_FILE)
        else:
            weight_map = {}
            for i, names in enumerate(plan):
                fname = f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors"
                save_file(
                    {n: tensors[n] for n in names}, str(tmp / fname), metadata={"format": "pt"}
                )
                files[fname] = _sha256_file(tmp / fname)
                weight_map.update(dict.fromkeys(names, fname))
            total = sum(_nbytes(t) for t in tensors.values())
            atomic_write_text(
                tmp / INDEX_FILE,
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1),
            )
        meta = {
            "format": format,
            "version": CURRENT_VERSIONS[format],
            "architecture": architecture,
            "producer": producer or "",
            "config": dict(config),
            "extra": dict(extra or {}),
            "files": files,
        }
        for name in files:  # safetensors writes 0600; weights follow the umask like the rest
            os.chmod(tmp / name, 0o666 & ~umask())
        atomic_write_text(tmp / CONFIG_JSON, json.dumps(meta, indent=2, sort_keys=False))
    return path


def read_weights_config(path: str | Path, *, format: str) -> dict[str, Any]:
    """Read and check ``config.json`` of a weights folder without loading weights."""
    path = Path(path)
    cfg_path = path / CONFIG_JSON
    if not cfg_path.is_file():
        raise FormatError(
            f"{path}: no {CONFIG_JSON}; not a {format} folder (or an unfinished write)"
        )
    try:
        meta = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise FormatError(f"{cfg_path}: not valid JSON ({e})") from None
    for key in ("format", "version", "architecture", "config"):
        if key not in meta:
            raise MissingFieldError(f"{cfg_path}: missing field {key!r}")
    check_format(meta["format"], meta["version"], expected_format=format, where=cfg_path)
    return meta


class NonFiniteWeightsError(FormatError):
    """A weights tensor holds NaN or infinite values (a diverged run, a bad conversion)."""


def check_finite_state(
    state: Mapping[str, Any],
    *,
    where: str,
    file_of: Callable[[str], str] | None = None,
    error: type[ValueError] = NonFiniteWeightsError,
) -> None:
    """Every floating-point (or complex) tensor of ``state`` is finite, else ``error`` on one
    line: ``WHERE: tensor NAME in FILE has non-finite values (N NaN, M inf of K); ...``
    (``file_of(name)`` names the file; without it the ``in FILE`` part is left out). The one
    finite-weights check of the repository: loaders call it (or
    :func:`load_weights_folder` with ``check_finite=True``)."""
    import torch

    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            continue
        if not (torch.is_floating_point(t) or torch.is_complex(t)):
            continue
        if bool(torch.isfinite(t).all()):
            continue
        nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        in_file = f" in {file_of(name)}" if file_of is not None else ""
        raise error(
            f"{where}: tensor {name}{in_file} has non-finite values ({nan} NaN, {inf} inf of "
            f"{t.numel()}); the weights are broken (a diverged run or a bad conversion)"
        )


def load_weights_folder(
    path: str | Path,
    *,
    format: str,
    device: str = "cpu",
    verify: bool = True,
    check_finite: bool = False,
) -> WeightsFolder:
    """Load a weights folder written by :func:`save_weights_folder` as torch tensors.

    ``verify`` checks each file's sha256 against ``config.json`` first. ``check_finite``
    refuses a tensor with NaN or inf (:class:`NonFiniteWeightsError` naming the folder, the
    ``.safetensors`` file and the tensor: :func:`check_finite_state`).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_weights_config(path, format=format)
    files = meta.get("files") or {}
    if (path / INDEX_FILE).is_file():
        try:
            index = json.loads((path / INDEX_FILE).read_text())
            names = sorted(set(index["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as e:
            raise FormatError(f"{path / INDEX_FILE}: invalid index ({e})") from None
    else:
        names = [SINGLE_FILE]
    state: dict[str, Any] = {}
    for name in names:
        f = path / name
        if not f.is_file():
            raise CorruptShardError(f"{f}: weights file listed for {path} is missing")
        if verify and name in files and _sha256_file(f) != files[name]:
            raise ChecksumError(f"{f}: sha256 does not match {path / CONFIG_JSON}")
        try:
            loaded = load_file(str(f), device=device)
        except (SafetensorError, OSError) as e:
            raise CorruptShardError(f"{f}: unreadable safetensors file ({e})") from None
        if check_finite:
            check_finite_state(
                loaded, where=f"{meta['format']} folder {path}", file_of=lambda _n, f=f: str(f)
            )
        state.update(loaded)
    return WeightsFolder(
        path=path,
        format=meta["format"],
        version=meta["version"],
        architecture=meta["architecture"],
        config=meta["config"],
        extra=meta.get("extra", {}),
        state_dict=state,
    )


def check_state_dict_fits(
    state_dict: Mapping[str, Any], expected_shapes: Mapping[str, tuple[int, ...]], *, where: str
) -> None:
    """Raise one ``ValueError`` (prefixed ``where``) naming the missing, unexpected (the first
    few and how many) or misshapen tensors of ``state_dict`` against ``expected_shapes``."""
    missing = sorted(set(expected_shapes) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected_shapes))
    if missing or unexpected:
        raise ValueError(
            f"{where}: missing {missing[:5]} ({len(missing)}), "
            f"unexpected {unexpected[:5]} ({len(unexpected)})"
        )
    for name, tensor in state_dict.items():
        if tuple(tensor.shape) != tuple(expected_shapes[name]):
            raise ValueError(
                f"{where}: {name}: shape {tuple(tensor.shape)}, "
                f"expected {tuple(expected_shapes[name])}"
            )
