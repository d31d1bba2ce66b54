"""Reading conditioning images / videos and writing outputs (MP4 through PyAV, GIF, frames).

Frames are uint8 ``[T, H, W, 3]`` numpy arrays on the output side; model-side video is a float
tensor ``[B, 3, T, H, W]`` in [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def load_image(path_or_image, height: int, width: int) -> torch.Tensor:
    """An image (path or PIL) resized to cover ``height x width`` and centre-cropped ->
    ``[3, H, W]`` in [-1, 1]. ValueError naming the file if it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(path_or_image, (str, Path)):
        path = Path(path_or_image)
        if not path.is_file():
            raise ValueError(f"image {path} does not exist")
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"image {path} is not a readable image ({e})") from None
    elif isinstance(path_or_image, Image.Image):
        image = path_or_image.convert("RGB")
    else:
        raise ValueError(f"image must be a path or a PIL image, got {type(path_or_image).__name__}")
    return _to_tensor(_cover_crop(image, height, width))


def _cover_crop(image, height: int, width: int):
    from PIL import Image

    w, h = image.size
    scale = max(height / h, width / w)
    sw, sh = max(width, round(w * scale)), max(height, round(h * scale))
    image = image.resize((sw, sh), Image.BICUBIC)
    top, left = (sh - height) // 2, (sw - width) // 2
    return image.crop((left, top, left + width, top + height))


def _to_tensor(image) -> torch.Tensor:
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def load_video(path: str | Path, height: int, width: int, max_frames: int | None = None):
    """Frames of a video file (PyAV) resized/cropped -> ``[3, T, H, W]`` in [-1, 1]."""
    import av

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"video {path} does not exist")
    frames = []
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                frames.append(_to_tensor(_cover_crop(frame.to_image(), height, width)))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except av.error.FFmpegError as e:
        raise ValueError(f"video {path} is not readable ({e})") from None
    if not frames:
        raise ValueError(f"video {path} has no frames")
    return torch.stack(frames, dim=1)


def save_video(frames_THWC: np.ndarray, path: str | Path, fps: float = 21.0) -> Path:
    """Write ``.mp4`` (H.264 through PyAV), ``.gif`` (PIL) or a folder of PNG frames (any
    other path, or a path ending in ``/``)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".mp4":
        import av

        _, h, w, _ = frames_THWC.shape
        with av.open(str(path), mode="w") as container:
            stream = container.add_stream("libx264", rate=round(fps))
            stream.width, stream.height = w - w % 2, h - h % 2
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "17"}
            for frame in frames_THWC:
                vf = av.VideoFrame.from_ndarray(frame[: h - h % 2, : w - w % 2], format="rgb24")
                container.mux(stream.encode(vf))
            container.mux(stream.encode())
    elif suffix == ".gif":
        images = [Image.fromarray(f) for f in frames_THWC]
        images[0].save(
            path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0
        )
    else:
        path.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(frames_THWC):
            Image.fromarray(f).save(path / f"frame_{i:05d}.png")
    return path
