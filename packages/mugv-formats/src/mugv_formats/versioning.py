"""Format names and versions: every dataset and checkpoint names both.

A version is ``MAJOR.MINOR``. A reader loads its own major version at any minor (older minors
always; newer minors with a warning, since minor bumps only add optional fields) and refuses
any other major with a message naming both versions.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from mugv_formats.errors import VersionError

CLIP_SHARDS_FORMAT = "mugv.clip-shards"
LATENT_SHARDS_FORMAT = "mugv.latent-shards"
VAE_CHECKPOINT_FORMAT = "mugv.vae-checkpoint"
DIT_EXPORT_FORMAT = "mugv.dit-export"
PREFERENCE_FORMAT = "mugv.preference-data"

#: The version each format is written at by this release of mugv-formats.
CURRENT_VERSIONS: dict[str, str] = {
    CLIP_SHARDS_FORMAT: "1.1",  # 1.1: manifest column record_sha256 (checksum of KEY.json)
    LATENT_SHARDS_FORMAT: "1.1",
    VAE_CHECKPOINT_FORMAT: "1.1",  # 1.1: config holds the architecture only (no runtime fields)
    DIT_EXPORT_FORMAT: "1.1",  # 1.1: config is the architecture only (no runtime settings)
    PREFERENCE_FORMAT: "1.0",
}


@dataclass(frozen=True, order=True)
class FormatVersion:
    """A ``MAJOR.MINOR`` format version."""

    major: int
    minor: int

    @classmethod
    def parse(cls, text: str, *, where: str | Path = "<unknown>") -> FormatVersion:
        parts = str(text).split(".")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise VersionError(f"{where}: format version {text!r} is not of the form MAJOR.MINOR")
        return cls(int(parts[0]), int(parts[1]))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


def check_format(
    found_format: str, found_version: str, *, expected_format: str, where: str | Path
) -> FormatVersion:
    """Check that ``found_format``/``found_version`` can be read as ``expected_format``.

    Returns the parsed version; raises :class:`VersionError` naming both versions otherwise.
    """
    if found_format != expected_format:
        raise VersionError(f"{where}: holds format {found_format!r}, expected {expected_format!r}")
    found = FormatVersion.parse(found_version, where=where)
    supported = FormatVersion.parse(CURRENT_VERSIONS[expected_format])
    if found.major != supported.major:
        newer = "newer" if found.major > supported.major else "older"
        raise VersionError(
            f"{where}: {expected_format} version {found} is a {newer} major version than this "
            f"reader supports ({supported.major}.x, mugv-formats {_package_version()}); "
            + (
                "upgrade mugv-formats to read it"
                if found.major > supported.major
                else "convert it with an older mugv-formats release"
            )
        )
    if found.minor > supported.minor:
        warnings.warn(
            f"{where}: {expected_format} version {found} is newer than {supported}; "
            "fields added since are ignored",
            stacklevel=3,
        )
    return found


def _package_version() -> str:
    try:
        return version("mugv-formats")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"
