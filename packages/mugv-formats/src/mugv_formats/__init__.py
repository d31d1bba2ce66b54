"""The on-disk contract between mugv stages.

Clip shards (mugv-data -> mugv-vae), latent shards (mugv-vae -> mugv-dit), weights folders
(VAE checkpoints, DiT inference exports) and preference data (-> mugv-align). Every file names
its format and version; readers refuse other major versions, verify checksums and name the
file and member at fault.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from mugv_formats.atomic import (
    atomic_open,
    atomic_replace_dir,
    atomic_write_bytes,
    atomic_write_text,
)
from mugv_formats.clips import ClipDataset, ClipDatasetHeader, ClipRecord, ClipShardWriter
from mugv_formats.errors import (
    ChecksumError,
    CorruptShardError,
    FormatError,
    MissingFieldError,
    VersionError,
)
from mugv_formats.indexed import IndexedShardReader, member_digests
from mugv_formats.latents import (
    IndexedLatentReader,
    LatentDataset,
    LatentDatasetHeader,
    LatentRecord,
    LatentSample,
    LatentShardWriter,
)
from mugv_formats.preference import (
    KTOSample,
    PreferenceHeader,
    PreferencePair,
    read_preference_data,
    write_preference_data,
)
from mugv_formats.shards import DatasetHeader, ShardRecord, derive_header
from mugv_formats.versioning import (
    CLIP_SHARDS_FORMAT,
    CURRENT_VERSIONS,
    DIT_EXPORT_FORMAT,
    LATENT_SHARDS_FORMAT,
    PREFERENCE_FORMAT,
    VAE_CHECKPOINT_FORMAT,
    FormatVersion,
    check_format,
)
from mugv_formats.weights import (
    WeightsFolder,
    load_weights_folder,
    read_weights_config,
    save_weights_folder,
)

try:
    __version__ = _version("mugv-formats")
except _PackageNotFoundError:  # running from a source tree (PYTHONPATH=packages/*/src)
    __version__ = "0+source"

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
    "check_format",
    "derive_header",
    "load_weights_folder",
    "member_digests",
    "read_preference_data",
    "read_weights_config",
    "save_weights_folder",
    "write_preference_data",
]
