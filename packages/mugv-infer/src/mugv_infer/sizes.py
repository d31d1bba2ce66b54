"""The release's sizes: 720p aspect-ratio table (height, width) and frame counts."""

from __future__ import annotations

from mugv_kernels.rope import MAX_FRAME_INDEX

ASPECT_RATIOS_720P: dict[str, tuple[int, int]] = {
    "9:16": (720, 1280),
    "3:4": (832, 1110),
    "1:1": (960, 960),
    "4:3": (1108, 832),
    "16:9": (1280, 720),
}
"""The release's table, keyed ``"height:width"`` as it is (so "16:9" is 1280 high, 720 wide:
portrait). Heights/widths that are not multiples of 16 are rounded down to one by
:func:`frame_size` (the VAE needs 8, the 2x2 patch another 2)."""

NUM_FRAMES: dict[str, int] = {"5s": 105, "3s": 73}
"""Frame counts of the release (1 + 8k: what the 8x temporal VAE produces)."""

SPATIAL_MULTIPLE = 16
MAX_SIDE = 4096
"""Largest height / width in pixels (the release generates 720p: 1280 at most)."""
MAX_LATENT_FRAMES = MAX_FRAME_INDEX - 1
"""Most latent frames: the DiT's RoPE time index (T + 2 entries) stops at 479."""


def frame_size(resolution: str, aspect_ratio: str = "16:9") -> tuple[int, int]:
    """(height, width) in pixels for ``resolution`` ("720p", or "HxW") and an aspect ratio."""
    if "x" in resolution:
        try:
            h, w = (int(v) for v in resolution.split("x"))
        except ValueError:
            raise ValueError(f"resolution {resolution!r} is not '720p' or 'HEIGHTxWIDTH'") from None
        return h, w
    if resolution != "720p":
        raise ValueError(f"resolution {resolution!r} unknown; use '720p' or 'HEIGHTxWIDTH'")
    if aspect_ratio not in ASPECT_RATIOS_720P:
        raise ValueError(
            f"aspect ratio {aspect_ratio!r} unknown; choose from {sorted(ASPECT_RATIOS_720P)}"
        )
    h, w = ASPECT_RATIOS_720P[aspect_ratio]
    return h - h % SPATIAL_MULTIPLE, w - w % SPATIAL_MULTIPLE


def num_frames(length: str | int) -> int:
    """Frames for "5s" / "3s" or an explicit count."""
    if isinstance(length, int) or str(length).isdigit():
        return int(length)
    if length not in NUM_FRAMES:
        raise ValueError(
            f"video length {length!r} unknown; choose from {sorted(NUM_FRAMES)} or a count"
        )
    return NUM_FRAMES[length]


def check_frames(n: int, temporal_compression: int = 8) -> int:
    """Latent frames for ``n`` pixel frames; ValueError unless ``n = 1 + 8k``."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1 or (n - 1) % temporal_compression:
        raise ValueError(
            f"num_frames={n!r} cannot be produced by the VAE: it must be 1 + {temporal_compression}k "
            "(1, 9, 17, ..., 73, ..., 105)"
        )
    most = 1 + temporal_compression * (MAX_LATENT_FRAMES - 1)
    if n > most:
        raise ValueError(f"num_frames={n} is more than the DiT can place in time (at most {most})")
    return 1 + (n - 1) // temporal_compression


def check_size(height: int, width: int) -> None:
    """Pixel ``height`` / ``width``: integers, positive multiples of 16, at most ``MAX_SIDE``."""
    sides = (height, width)
    if any(not isinstance(v, int) or isinstance(v, bool) for v in sides) or any(
        v <= 0 or v % SPATIAL_MULTIPLE or v > MAX_SIDE for v in sides
    ):
        raise ValueError(
            f"height={height!r} and width={width!r} must be positive multiples of "
            f"{SPATIAL_MULTIPLE} (VAE x8, patch x2), at most {MAX_SIDE}"
        )
