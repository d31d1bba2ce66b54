"""VAE checkpoints: mugv-formats weights folders (``config.json`` + safetensors).

``config.json`` holds the architecture config (``VAEConfig``) and, under ``extra``, the
latent statistics (also stored as the ``latent_mean``/``latent_std`` tensors) and the
producer. The checkpoint id is derived from the weights files' sha256, so two folders with the
same weights have the same id.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from mugv_vae.config import VAEConfig

ARCHITECTURE = "mugv-vae"
"""Architecture name written to, and required in, ``config.json``."""


RUNTIME_FIELDS = (
    "fused_group_norm_silu",
    "gradient_checkpointing",
    "channels_last",
    "fused_nhwc_ops",
    "fold_upsample_conv",
    "compile_trunk",
    "max_activation_bytes",
)
"""Config fields that do not change weights: overridable when loading a checkpoint."""


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
    """Write ``model`` (a ``MugvVAE``) as a VAE checkpoint folder, atomically."""
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


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", **overrides: Any):
    """Load a VAE checkpoint folder into a ``MugvVAE`` (eval mode).

    ``overrides`` replace top-level config fields that do not change weights (e.g.
    ``fused_group_norm_silu=True``, ``gradient_checkpointing=True``).
    """
    from mugv_vae.model import MugvVAE

    f = _formats()
    folder = f.load_weights_folder(path, format=f.VAE_CHECKPOINT_FORMAT)
    if folder.architecture != ARCHITECTURE:
        raise f.FormatError(
            f"{path}/config.json: architecture {folder.architecture!r}, expected {ARCHITECTURE!r}"
        )
    allowed = set(RUNTIME_FIELDS)
    bad = set(overrides) - allowed
    if bad:
        raise ValueError(f"cannot override {sorted(bad)} when loading; allowed: {sorted(allowed)}")
    try:
        config = VAEConfig.model_validate({**folder.config, **overrides})
    except ValueError as e:
        raise f.FormatError(f"{path}/config.json: invalid VAE config: {e}") from None
    model = MugvVAE(config)
    missing, unexpected = model.load_state_dict(folder.state_dict, strict=False)
    if missing or unexpected:
        raise f.FormatError(
            f"{path}: weights do not match the config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return model.to(device).eval()
