"""Reading conditioning images / videos and writing outputs (MP4, GIF, PNG frames).

Videos are decoded by mugv-vae's decoder and MP4s written by mugv-formats' one writer (both
PyAV). Frames are uint8 ``[T, H, W, 3]`` numpy arrays on the output side; model-side video is
a float tensor ``[B, 3, T, H, W]`` in [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from mugv_formats.atomic import atomic_open, refuse_symlink
from mugv_formats.video import write_mp4
from mugv_vae.video import decode_video
from PIL import Image, UnidentifiedImageError

MP4_CRF = 17
"""libx264 quality of the written MP4s (lower is better; 17 is visually lossless)."""


CROP_ROUNDINGS = ("floor", "round")
"""Centre-crop offset ``(excess / 2)``: ``floor`` (ours) or ``round`` (the release: Python's
round, half to even: an excess of 7 columns crops 4 on the left, 3 with ``floor``)."""


def load_image(
    path_or_image, height: int, width: int, crop_rounding: str = "floor"
) -> torch.Tensor:
    """An image (path or PIL) resized to cover ``height x width`` and centre-cropped ->
    ``[3, H, W]`` in [-1, 1]. ValueError naming the file if it cannot be read.
    ``crop_rounding``: see :data:`CROP_ROUNDINGS`."""
    if isinstance(path_or_image, (str, Path)):
        path = Path(path_or_image)
        if not path.is_file():
            raise ValueError(f"image {path} does not exist")
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
            raise ValueError(f"image {path} is not a readable image ({e})") from None
    elif isinstance(path_or_image, Image.Image):
        image = path_or_image.convert("RGB")
    else:
        raise ValueError(f"image must be a path or a PIL image, got {type(path_or_image).__name__}")
    return _to_tensor(_cover_crop(image, height, width, crop_rounding))


def crop_offset(excess: int, crop_rounding: str = "floor") -> int:
    """Pixels cut before the kept window when ``excess`` pixels are cut in all."""
    if crop_rounding not in CROP_ROUNDINGS:
        raise ValueError(f"crop_rounding {crop_rounding!r} unknown; choose from {CROP_ROUNDINGS}")
    return excess // 2 if crop_rounding == "floor" else round(excess / 2.0)


def _cover_crop(image, height: int, width: int, crop_rounding: str = "floor"):
    w, h = image.size
    scale = max(height / h, width / w)
    sw, sh = max(width, round(w * scale)), max(height, round(h * scale))
    image = image.resize((sw, sh), Image.BICUBIC)
    top, left = crop_offset(sh - height, crop_rounding), crop_offset(sw - width, crop_rounding)
    return image.crop((left, top, left + width, top + height))


def _to_tensor(image) -> torch.Tensor:
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def load_video(path: str | Path, height: int, width: int, max_frames: int | None = None):
    """The first ``max_frames`` frames of a video file, each resized/cropped as
    :func:`load_image` does -> ``[3, T, H, W]`` in [-1, 1]. ValueError naming the file if it
    is missing, cannot be decoded or has no frames."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"video {path} does not exist")
    frames_THW3 = decode_video(path, max_frames=max_frames, where=f"video {path}")
    frames = [_to_tensor(_cover_crop(Image.fromarray(f), height, width)) for f in frames_THW3]
    return torch.stack(frames, dim=1)


def save_video(frames_THWC: np.ndarray, path: str | Path, fps: float = 21.0) -> Path:
    """Write ``.mp4`` (H.264, :data:`MP4_CRF`, the same bytes for the same frames: x264's
    mb-tree off, see ``mugv_formats.video.encode_mp4``; an odd height or width loses its last pixel
    row / column), ``.gif`` (PIL) or a folder of PNG frames (any other path, or a path ending
    in ``/``). The MP4 and the GIF appear complete or not at all."""
    path = Path(path)
    refuse_symlink(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".mp4":
        write_mp4(frames_THWC, path, fps, crf=MP4_CRF, deterministic=True)
    elif suffix == ".gif":
        images = [Image.fromarray(f) for f in frames_THWC]
        with atomic_open(path) as f:
            images[0].save(
                f,
                format="GIF",
                save_all=True,
                append_images=images[1:],
                duration=round(1000 / fps),
                loop=0,
            )
    else:
        path.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(frames_THWC):
            with atomic_open(path / f"frame_{i:05d}.png") as out:  # no write through a link
                Image.fromarray(f).save(out, format="PNG")
    return path
