"""VAE checkpoints: mugv-formats weights folders (``config.json`` + safetensors).

``config.json`` holds the architecture config (``VAEConfig``: what defines the weights) and,
under ``extra``, the latent statistics (also stored as the ``latent_mean``/``latent_std``
tensors) and the producer. How the loaded model runs (``VAERuntime``) is chosen by the loader.
Format 1.0 folders also stored the runtime fields in ``config``; they load, those fields
ignored (the loader's runtime applies). The checkpoint id is derived from the weights files' sha256, so two folders with the
same weights have the same id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from mugv_vae.config import VAEConfig, VAERuntime

ARCHITECTURE = "mugv-vae"
"""Architecture name written to, and required in, ``config.json``."""

_LEGACY_RUNTIME_FIELDS = frozenset(VAERuntime.model_fields)
"""Runtime fields that format 1.0 folders stored in ``config`` (dropped when loading them)."""


def _formats():
    import mugv_formats

    return mugv_formats


def checkpoint_id(path: str | Path) -> str:
    """Stable id of a checkpoint folder: ``mugv-vae:<16 hex of the weights' sha256>``."""
    f = _formats()
    meta = f.read_weights_config(path, format=f.VAE_CHECKPOINT_FORMAT)
    files = meta.get("files") or {}
    if not files:
        raise f.FormatError(f"{path}/config.json lists no weights files; cannot derive an id")
    digest = hashlib.sha256("".join(f"{k}={files[k]};" for k in sorted(files)).encode())
    return f"{ARCHITECTURE}:{digest.hexdigest()[:16]}"


def save_checkpoint(
    model: torch.nn.Module, path: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` (a ``MUGVAE``: ``state_dict``, ``config``, ``latent_mean``/``latent_std``)
    as a VAE checkpoint folder, atomically."""
    from mugv_vae import __version__

    f = _formats()
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    meta = {
        "latent_mean": model.latent_mean.tolist(),
        "latent_std": model.latent_std.tolist(),
        **(extra or {}),
    }
    return f.save_weights_folder(
        path,
        format=f.VAE_CHECKPOINT_FORMAT,
        architecture=ARCHITECTURE,
        config=model.config.model_dump(mode="json"),
        state_dict=state,
        extra=meta,
        producer=f"mugv-vae {__version__}",
    )


def weights_config(path: str | Path, version: str, config: dict[str, Any]) -> VAEConfig:
    """The ``VAEConfig`` of a checkpoint's ``config.json`` ``config`` section at format
    ``version`` (a 1.0 section's runtime fields are dropped; later ones must have none)."""
    f = _formats()
    data = dict(config)
    if f.FormatVersion.parse(version, where=path) < f.FormatVersion(1, 1):
        for name in _LEGACY_RUNTIME_FIELDS:
            data.pop(name, None)
    try:
        return VAEConfig.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"field config.{'.'.join(str(p) for p in err['loc'])}: {err['msg']} "
            f"(value {err.get('input')!r})"
            + (
                " (a runtime setting: chosen at load with VAERuntime)"
                if err["loc"][0] in _LEGACY_RUNTIME_FIELDS
                else ""
            )
            for err in e.errors()
        )
        raise f.FormatError(f"{path}/config.json: invalid VAE config: {problems}") from None


@dataclass(frozen=True)
class VAECheckpoint:
    """What a checkpoint folder holds: the architecture, the weights, ``extra`` metadata."""

    config: VAEConfig
    state_dict: dict[str, torch.Tensor]
    extra: dict[str, Any]
    version: str


def read_checkpoint(path: str | Path) -> VAECheckpoint:
    """Read and check a VAE checkpoint folder (format, version, architecture, config).

    Builds no model: ``MUGVAE.from_pretrained`` does, so this module never imports the model
    (the dependency runs one way, model -> checkpoint).
    """
    f = _formats()
    folder = f.load_weights_folder(path, format=f.VAE_CHECKPOINT_FORMAT)
    if folder.architecture != ARCHITECTURE:
        raise f.FormatError(
            f"{path}/config.json: architecture {folder.architecture!r}, expected {ARCHITECTURE!r}"
        )
    config = weights_config(path, folder.version, folder.config)
    return VAECheckpoint(config, folder.state_dict, dict(folder.extra or {}), folder.version)
