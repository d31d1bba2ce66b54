"""Training data: deterministic per-step batches of clips from clip shards or video files.

Sources: a clip-shard dataset, a folder of video files, or a folder of pre-decoded clips
(``.npy`` uint8 ``[T, H, W, 3]``, e.g. a decoded cache on a machine without PyAV).

Batch ``step`` on ``rank`` depends only on ``(seed, step, rank)``, so resuming at any step
reproduces the exact batches without sampler state. Videos are decoded with PyAV up to
``frames + max_offset`` frames; a random temporal offset and the bucket crop follow. A step
is an image step (T = 1, one random frame per clip) with probability ``image_ratio``.
"""

from __future__ import annotations

from pathlib import Path

import mugv_formats as mf
import numpy as np
import torch
from torch.utils.data import Dataset

from mugv_vae.video import (
    decode_video,
    parse_resolution,
    prepare_clip,
    to_model_input,
    usable_frames,
)

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")


class ClipSource:
    """Random access to encoded clips: a clip-shard dataset or a folder of videos."""

    def __init__(self, path: str | Path, *, cache_decoded: bool = False) -> None:
        path = Path(path)
        self.path = path
        self._blobs: list[bytes] | None = None
        # (index, max_frames) -> decoded frames, when cache_decoded (small clip sets)
        self._decoded: dict[tuple[int, int | None], np.ndarray] | None = (
            {} if cache_decoded else None
        )
        if (path / "dataset.json").is_file():
            ds = mf.ClipDataset(path)
            self.keys, self._blobs = [], []
            for record, mp4 in ds:
                self.keys.append(record.key)
                self._blobs.append(mp4)
        elif path.is_dir():
            suffixes = (*VIDEO_SUFFIXES, ".npy")
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes)
            self.files = files
            self.keys = [p.stem for p in files]
        else:
            raise FileNotFoundError(f"{path}: neither a clip-shard dataset nor a folder of videos")
        if not self.keys:
            raise ValueError(f"{path}: no clips found")

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def caches_decoded(self) -> bool:
        """Whether decoded clips are kept (``cache_decoded``): the same frames every call."""
        return self._decoded is not None

    def frames(self, index: int, max_frames: int | None = None) -> np.ndarray:
        """The first ``max_frames`` frames of clip ``index`` as uint8 ``[T, H, W, 3]`` (a
        read-only array shared by later calls when the source caches decoded clips)."""
        if self._decoded is None:
            return self._decode(index, max_frames)
        key = (index, max_frames)
        if key not in self._decoded:
            frames = self._decode(index, max_frames)
            frames.flags.writeable = False
            self._decoded[key] = frames
        return self._decoded[key]

    def _decode(self, index: int, max_frames: int | None) -> np.ndarray:
        where = f"{self.path}:{self.keys[index]}"
        if self._blobs is not None:
            return decode_video(self._blobs[index], max_frames=max_frames, where=where)
        f = self.files[index]
        if f.suffix == ".npy":
            arr = np.load(f, mmap_mode="r")
            if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
                raise ValueError(f"{f}: expected uint8 [T, H, W, 3], got {arr.dtype} {arr.shape}")
            return np.array(arr[:max_frames])  # a writable copy
        return decode_video(f.read_bytes(), max_frames=max_frames, where=where)

    def load(self, index: int, frames: int, buckets: list[tuple[int, int]]):
        """Clip ``index`` as VAE input ``[3, 1+8k, H, W]`` in [-1, 1] (closest bucket)."""
        where = f"{self.path}:{self.keys[index]}"
        return prepare_clip(self.frames(index, frames), frames, buckets, where)


def step_rng(seed: int, step: int, rank: int) -> np.random.Generator:
    return np.random.default_rng([seed, step, rank])


class StepBatches(Dataset):
    """``dataset[step]`` -> dict(video ``[B, 3, T, H, W]`` in [-1, 1], window, is_image)."""

    def __init__(
        self,
        source: ClipSource,
        resolution: str,
        frames: int,
        batch_size: int,
        image_ratio: float,
        windows: list[int],
        seed: int,
        rank: int,
        steps: int,
        max_offset: int = 16,
        distinct_clips: bool = False,
    ) -> None:
        self.source, self.size = source, parse_resolution(resolution)
        self.frames, self.batch_size, self.image_ratio = frames, batch_size, image_ratio
        self.windows, self.seed, self.rank, self.steps = windows, seed, rank, steps
        self.max_offset, self.distinct_clips = max_offset, distinct_clips
        # (clip, image step, first frame) -> model input, where the source keeps its decoded
        # clips: the same frames give the same tensor, so the resize and float conversion
        # (a fifth of a demo step on CPU) run once per distinct sample, not every step
        self._inputs: dict[tuple[int, bool, int], torch.Tensor] | None = (
            {} if source.caches_decoded else None
        )
        usable_frames(frames, frames)  # validates >= 1
        if (frames - 1) % 8:
            raise ValueError(f"data.frames must be 1 + 8k, got {frames}")

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> dict:
        rng = step_rng(self.seed, step, self.rank)
        is_image = bool(rng.random() < self.image_ratio)
        clips = []
        n_clips = len(self.source)
        distinct = self.distinct_clips and self.batch_size <= n_clips
        order = rng.permutation(n_clips)[: self.batch_size] if distinct else None
        for k in range(self.batch_size):
            idx = int(order[k]) if order is not None else int(rng.integers(n_clips))
            raw = self.source.frames(idx, self.frames + self.max_offset)
            if is_image:
                t0 = int(rng.integers(raw.shape[0]))
            else:
                n = usable_frames(raw.shape[0], self.frames)
                t0 = int(rng.integers(raw.shape[0] - n + 1))
            key = (idx, is_image, t0)
            if self._inputs is not None and key in self._inputs:
                clips.append(self._inputs[key])  # torch.stack below copies it
                continue
            if is_image:
                part = raw[t0 : t0 + 1]
            else:
                part = raw[t0 : t0 + n]
                if n < self.frames:  # short clip: repeat the last frame
                    pad = np.repeat(part[-1:], self.frames - n, axis=0)
                    part = np.concatenate([part, pad])
            clip = to_model_input(np.array(part), self.size)  # writable, contiguous
            if self._inputs is not None:
                self._inputs[key] = clip
            clips.append(clip)
        latents = 1 if is_image else 1 + (self.frames - 1) // 8
        allowed = [w for w in self.windows if w <= latents] or [1]
        window = int(allowed[int(rng.integers(len(allowed)))])
        return {"video": torch.stack(clips), "window": window, "is_image": is_image, "step": step}
