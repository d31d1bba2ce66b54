"""Frechet Video Distance: I3D features of two video sets, a Gaussian each, their Frechet
distance (:mod:`mugv.evaluation.frechet`).

Protocol (as the FVD paper and its common PyTorch ports): the first ``frames`` (16) frames of
each video (a shorter video repeats its last frame, and says so), every frame resized to
``size`` x ``size`` (224, bilinear, antialiased, no crop), RGB scaled to [-1, 1]; features are
the I3D's time-averaged 400-way Kinetics logits (``--i3d-features pool``: the 1024-d pooled
features instead). Both sets go through the same extractor; the distance is computed in
float64. With few videos the estimate is biased upwards: the result carries both counts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mugv.evaluation.frechet import frechet_distance_of

FVD_FRAMES = 16
FVD_SIZE = 224

Extractor = Callable[[torch.Tensor], torch.Tensor]
"""``[B, 3, T, H, W]`` in [-1, 1] -> ``[B, D]`` features."""


def prepare(frames_THWC: np.ndarray, frames: int = FVD_FRAMES, size: int = FVD_SIZE):
    """uint8 ``[T, H, W, 3]`` -> float ``[3, frames, size, size]`` in [-1, 1] and whether the
    video was padded (fewer than ``frames`` frames: the last one repeated)."""
    if frames_THWC.ndim != 4 or frames_THWC.shape[-1] != 3 or frames_THWC.shape[0] < 1:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames_THWC.shape}")
    x = torch.from_numpy(np.ascontiguousarray(frames_THWC[:frames])).permute(0, 3, 1, 2).float()
    padded = x.shape[0] < frames
    if padded:
        x = torch.cat([x, x[-1:].expand(frames - x.shape[0], -1, -1, -1)])
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x / 127.5 - 1.0).clamp(-1, 1).permute(1, 0, 2, 3).contiguous(), padded


@torch.no_grad()
def extract_features(
    videos: Sequence[np.ndarray],
    extractor: Extractor,
    *,
    frames: int = FVD_FRAMES,
    size: int = FVD_SIZE,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, int]:
    """Features ``[N, D]`` (float64) of uint8 videos and how many were padded."""
    feats, padded, batch = [], 0, []

    def flush():
        if batch:
            y = extractor(torch.stack(batch).to(device))
            feats.append(y.double().cpu().numpy())
            batch.clear()

    for v in videos:
        x, was_padded = prepare(v, frames, size)
        padded += was_padded
        batch.append(x)
        if len(batch) == batch_size:
            flush()
    flush()
    if not feats:
        raise ValueError("no videos to extract features from")
    return np.concatenate(feats), padded


def fvd(
    generated: Sequence[np.ndarray],
    reference: Sequence[np.ndarray],
    extractor: Extractor,
    **kwargs,
) -> dict:
    """``{"fvd", "generated", "reference", "padded"}`` of two lists of uint8 videos."""
    if len(generated) < 2 or len(reference) < 2:
        raise ValueError(
            f"FVD needs at least 2 videos per set, got {len(generated)} generated and "
            f"{len(reference)} reference"
        )
    fg, pg = extract_features(generated, extractor, **kwargs)
    fr, pr = extract_features(reference, extractor, **kwargs)
    return {
        "fvd": frechet_distance_of(fg, fr),
        "generated": len(generated),
        "reference": len(reference),
        "padded": pg + pr,
        "feature_dim": int(fg.shape[1]),
    }


def i3d_extractor(weights: str, kind: str = "logits", device: str = "cpu") -> Extractor:
    """The I3D of a local safetensors file as an :data:`Extractor`."""
    from mugv.evaluation.i3d import InceptionI3d

    model = InceptionI3d.from_file(weights).to(device)
    return lambda x: model.features(x, kind)
