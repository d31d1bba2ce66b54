"""Spatial tiling with overlap blending, for bounded-memory encode and decode.

A function ``fn`` mapping ``[..., H, W] -> [..., H*s, W*s]`` (s = ``scale``, possibly a
fraction like 1/8) is applied to overlapping tiles of the input; the outputs are blended with
weights that ramp linearly across each overlap (and stay 1 at the image borders), so seams
fade instead of jumping.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import torch


def _starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return sorted(set(starts))


def _edge_weights(n: int, device, dtype) -> torch.Tensor:
    """Weights over an overlap of ``n`` positions, rising from the tile's edge inwards: 0 at
    the edge (the position most affected by the tile's zero padding) to 1, so the two tiles'
    weights sum to 1 everywhere; 0.5 for a single position."""
    if n == 1:
        return torch.full((1,), 0.5, device=device, dtype=dtype)
    return torch.arange(n, device=device, dtype=dtype) / (n - 1)


def _ramp(length: int, overlap_before: int, overlap_after: int, device, dtype) -> torch.Tensor:
    w = torch.ones(length, device=device, dtype=dtype)
    if overlap_before > 0:
        w[:overlap_before] = _edge_weights(overlap_before, device, dtype)
    if overlap_after > 0:
        w[length - overlap_after :] = _edge_weights(overlap_after, device, dtype).flip(0)
    return w


def tiled_apply(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: int,
    overlap: int,
    scale: Fraction | int,
    align: int = 1,
) -> torch.Tensor:
    """Apply ``fn`` to overlapping ``tile x tile`` windows of ``x``'s last two dims and blend.

    ``tile`` and ``overlap`` are in input units and must be multiples of ``align`` (tiles
    start on ``align`` boundaries so every tile maps to whole output positions).
    """
    if overlap < 0 or overlap >= tile:
        raise ValueError(f"tile overlap must be in [0, tile={tile}), got {overlap}")
    if tile % align or overlap % align:
        raise ValueError(f"tile={tile} and overlap={overlap} must be multiples of {align}")
    scale = Fraction(scale)
    height, width = x.shape[-2:]
    if height <= tile and width <= tile:
        return fn(x)
    stride = tile - overlap
    rows, cols = _starts(height, tile, stride), _starts(width, tile, stride)
    if any(r % align for r in rows) or any(c % align for c in cols):
        raise ValueError(f"input size {height}x{width} must be a multiple of {align} for tiling")
    out = weight = None
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            th, tw = min(tile, height - r), min(tile, width - c)
            y = fn(x[..., r : r + th, c : c + tw])
            if out is None:
                out_shape = (*y.shape[:-2], int(height * scale), int(width * scale))
                out = torch.zeros(out_shape, device=y.device, dtype=torch.float32)
                weight = torch.zeros(out_shape[-2:], device=y.device, dtype=torch.float32)
            oy, ox = int(r * scale), int(c * scale)
            oh, ow = y.shape[-2:]
            # Overlap with the previous/next tile, in output units (0 at image borders).
            up = int((rows[i - 1] + tile - r) * scale) if i > 0 else 0
            down = int((r + th - rows[i + 1]) * scale) if i + 1 < len(rows) else 0
            left = int((cols[j - 1] + tile - c) * scale) if j > 0 else 0
            right = int((c + tw - cols[j + 1]) * scale) if j + 1 < len(cols) else 0
            w2 = (
                _ramp(oh, up, down, y.device, torch.float32)[:, None]
                * _ramp(ow, left, right, y.device, torch.float32)[None, :]
            )
            out[..., oy : oy + oh, ox : ox + ow] += y.float() * w2
            weight[oy : oy + oh, ox : ox + ow] += w2
    return (out / weight).to(y.dtype)
