"""The on-disk contract between mugv stages.

Clip shards (mugv-data -> mugv-vae), latent shards (mugv-vae -> mugv-dit), weights folders
(VAE checkpoints, DiT inference exports) and preference data (-> mugv-align). Every file names
its format and version; readers refuse other major versions, verify checksums and name the
file and member at fault.

Importing the package is cheap: each public name is imported from its module on first use, so
light modules (``mugv_formats.lifecycle``, ``mugv_formats.console``) load no pyarrow or pydantic
and a helper process whose initializer lives there starts fast.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version
from typing import Any

try:
    __version__ = _version("mugv-formats")
except _PackageNotFoundError:  # running from a source tree (PYTHONPATH=packages/*/src)
    __version__ = "0+source"

# public name -> the module defining it (imported on first access)
_HOME = {
    "atomic_open": "mugv_formats.atomic",
    "atomic_replace_dir": "mugv_formats.atomic",
    "atomic_write_bytes": "mugv_formats.atomic",
    "atomic_write_text": "mugv_formats.atomic",
    "open_append_nofollow": "mugv_formats.atomic",
    "OutputClaim": "mugv_formats.outputs",
    "OutputError": "mugv_formats.outputs",
    "artifact_kind": "mugv_formats.outputs",
    "claim_output": "mugv_formats.outputs",
    "output_lock": "mugv_formats.outputs",
    "check_nv_meta": "mugv_formats.energon",
    "ClipDataset": "mugv_formats.clips",
    "ClipDatasetHeader": "mugv_formats.clips",
    "ClipRecord": "mugv_formats.clips",
    "ClipShardWriter": "mugv_formats.clips",
    "ChecksumError": "mugv_formats.errors",
    "CorruptShardError": "mugv_formats.errors",
    "FormatError": "mugv_formats.errors",
    "MissingFieldError": "mugv_formats.errors",
    "VersionError": "mugv_formats.errors",
    "IndexedShardReader": "mugv_formats.indexed",
    "member_digests": "mugv_formats.indexed",
    "IndexedLatentReader": "mugv_formats.latents",
    "LatentDataset": "mugv_formats.latents",
    "LatentDatasetHeader": "mugv_formats.latents",
    "LatentRecord": "mugv_formats.latents",
    "LatentSample": "mugv_formats.latents",
    "LatentShardWriter": "mugv_formats.latents",
    "KTOSample": "mugv_formats.preference",
    "PreferenceHeader": "mugv_formats.preference",
    "PreferencePair": "mugv_formats.preference",
    "read_preference_data": "mugv_formats.preference",
    "check_keys_exist": "mugv_formats.preference",
    "write_preference_data": "mugv_formats.preference",
    "DatasetHeader": "mugv_formats.shards",
    "ShardRecord": "mugv_formats.shards",
    "derive_header": "mugv_formats.shards",
    "CLIP_SHARDS_FORMAT": "mugv_formats.versioning",
    "CURRENT_VERSIONS": "mugv_formats.versioning",
    "DIT_EXPORT_FORMAT": "mugv_formats.versioning",
    "LATENT_SHARDS_FORMAT": "mugv_formats.versioning",
    "PREFERENCE_FORMAT": "mugv_formats.versioning",
    "VAE_CHECKPOINT_FORMAT": "mugv_formats.versioning",
    "FormatVersion": "mugv_formats.versioning",
    "check_format": "mugv_formats.versioning",
    "WeightsFolder": "mugv_formats.weights",
    "NonFiniteWeightsError": "mugv_formats.weights",
    "check_finite_state": "mugv_formats.weights",
    "load_weights_folder": "mugv_formats.weights",
    "read_weights_config": "mugv_formats.weights",
    "save_weights_folder": "mugv_formats.weights",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'mugv_formats' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))


__all__ = [
    "CLIP_SHARDS_FORMAT",
    "CURRENT_VERSIONS",
    "DIT_EXPORT_FORMAT",
    "LATENT_SHARDS_FORMAT",
    "PREFERENCE_FORMAT",
    "VAE_CHECKPOINT_FORMAT",
    "ChecksumError",
    "ClipDataset",
    "ClipDatasetHeader",
    "ClipRecord",
    "ClipShardWriter",
    "CorruptShardError",
    "FormatError",
    "DatasetHeader",
    "FormatVersion",
    "IndexedLatentReader",
    "IndexedShardReader",
    "KTOSample",
    "LatentDataset",
    "LatentDatasetHeader",
    "LatentRecord",
    "LatentSample",
    "LatentShardWriter",
    "MissingFieldError",
    "PreferenceHeader",
    "PreferencePair",
    "ShardRecord",
    "VersionError",
    "WeightsFolder",
    "atomic_open",
    "atomic_replace_dir",
    "atomic_write_bytes",
    "atomic_write_text",
    "open_append_nofollow",
    "OutputClaim",
    "OutputError",
    "artifact_kind",
    "claim_output",
    "output_lock",
    "check_nv_meta",
    "check_format",
    "check_keys_exist",
    "derive_header",
    "load_weights_folder",
    "NonFiniteWeightsError",
    "check_finite_state",
    "member_digests",
    "read_preference_data",
    "read_weights_config",
    "save_weights_folder",
    "write_preference_data",
]
