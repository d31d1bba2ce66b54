"""The video sets ``mugv eval generation`` reads: a folder of video files (mp4, ...) or a
clip-shard dataset, decoded through mugv-vae's clip source; prompts from a JSON file
``{video file name or key: prompt}`` or, for a clip-shard dataset, its captions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Video:
    key: str
    frames: np.ndarray  # uint8 [T, H, W, 3]
    prompt: str | None = None
    path: Path | None = None  # the file, for a folder of videos


def read_prompts(path: str | Path) -> dict[str, str]:
    """``{video file name or key: prompt}`` from a JSON object (VBench's prompt-file shape)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"prompt file {path} is not JSON: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f"prompt file {path} must be a JSON object {{video name: prompt}}")
    return {Path(str(k)).name: v for k, v in data.items()}


def load_videos(
    path: str | Path,
    *,
    max_frames: int | None = None,
    prompts: dict[str, str] | None = None,
    max_videos: int | None = None,
) -> list[Video]:
    """Every video of ``path`` (sorted; a clip-shard dataset in its order), its first
    ``max_frames`` frames; each with its prompt (``prompts`` by file name, stem or key, else the
    dataset's caption)."""
    import mugv_formats as mf
    from mugv_vae.train.data import ClipSource

    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"video set {path} does not exist")
    source = ClipSource(path)
    captions: dict[str, str] = {}
    if (path / "dataset.json").is_file():
        captions = {r.key: r.caption for r in mf.ClipDataset(path).records()}
    files = getattr(source, "files", None)
    prompts = prompts or {}
    out = []
    n = len(source) if max_videos is None else min(len(source), max_videos)
    for i in range(n):
        key = source.keys[i]
        file = files[i] if files is not None else None
        prompt = None
        for name in ([file.name] if file is not None else []) + [key]:
            prompt = prompts.get(name, prompt) if prompt is None else prompt
        out.append(Video(key, source.frames(i, max_frames), prompt or captions.get(key), file))
    return out
