"""3D rotary position embedding of MUG-DiT tokens, as the MUG-V release places them.

The head dim ``Dh`` is cut into three equal contiguous parts (row, column, time); each part is
a 1D RoPE of ``Dh/3`` channels whose pair ``j`` turns by ``pos * theta**(-2j / (Dh/3))``.
Channel pairs ``(2i, 2i+1)`` are interleaved (one complex number each).

Positions come from a frame index of ``T + 2`` entries per sample (start token, the ``T``
token frames after temporal patching, end token; default ``arange(T + 2)``), clamped to
``[0, 479]`` as in the release:

* start token: time ``fi[0]``, row 0, column 0;
* video token ``(t, h, w)`` (time-major order): time ``fi[1 + t]``, row ``h``, column ``w``;
* end token: time ``fi[T + 1]``, row ``H - 1``, column ``W - 1`` (of the patch grid).

Legend: B batch, F = T + 2 frame-index entries, N = T*H*W + 2 tokens, K = Dh/2 pairs.
"""

from __future__ import annotations

import torch

MAX_FRAME_INDEX = 479
"""The release clamps frame indices to ``[0, MAX_FRAME_INDEX]``."""


def default_frame_index(batch: int, frames: int, device=None) -> torch.Tensor:
    """``arange(T + 2)`` for every sample, ``[B, T + 2]`` (int64)."""
    return torch.arange(frames + 2, device=device)[None].expand(batch, frames + 2)


def rope_angles(
    grid_thw: tuple[int, int, int],
    head_dim: int,
    frame_index_BF: torch.Tensor,
    theta: float = 10000.0,
    max_frame_index: int = MAX_FRAME_INDEX,
) -> torch.Tensor:
    """Rotation angles ``[B, N, Dh/2]`` (float64) of ``[start, video tokens..., end]``."""
    t, h, w = grid_thw
    if head_dim % 6:
        raise ValueError(f"head_dim={head_dim} must be divisible by 6 for 3D RoPE")
    if frame_index_BF.ndim != 2 or frame_index_BF.shape[1] != t + 2:
        raise ValueError(
            f"frame_index must have shape [B, T+2] with T={t} latent frames after patching "
            f"(start, {t} frames, end), got {tuple(frame_index_BF.shape)}"
        )
    b = frame_index_BF.shape[0]
    part = head_dim // 3
    f64 = torch.float64
    inv_K = theta ** (-2.0 * torch.arange(part // 2, dtype=f64) / part)
    fi_BF = frame_index_BF.detach().to("cpu", f64).clamp(0, max_frame_index)
    rows = torch.arange(h, dtype=f64)[None, :, None].expand(t, h, w)
    cols = torch.arange(w, dtype=f64)[None, None, :].expand(t, h, w)
    # positions [B, N, 3] as (row, column, time)
    video_BM3 = torch.stack(
        [
            rows.reshape(1, -1).expand(b, -1),
            cols.reshape(1, -1).expand(b, -1),
            fi_BF[:, 1:-1, None, None].expand(b, t, h, w).reshape(b, -1),
        ],
        dim=-1,
    )
    zeros_B = torch.zeros(b, dtype=f64)
    start_B13 = torch.stack([zeros_B, zeros_B, fi_BF[:, 0]], dim=-1)[:, None]
    end_B13 = torch.stack([zeros_B + (h - 1), zeros_B + (w - 1), fi_BF[:, -1]], dim=-1)[:, None]
    pos_BN3 = torch.cat([start_B13, video_BM3, end_B13], dim=1)
    return (pos_BN3[..., None] * inv_K).flatten(-2)  # [B, N, 3 * part/2]


def rope_tables(
    grid_thw: tuple[int, int, int],
    head_dim: int,
    frame_index_BF: torch.Tensor,
    *,
    theta: float = 10000.0,
    device=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin`` tables ``[B, N, Dh/2]`` (float32) on ``device``."""
    ang = rope_angles(grid_thw, head_dim, frame_index_BF, theta)
    return ang.cos().float().to(device), ang.sin().float().to(device)


def apply_rope(x_BNHD: torch.Tensor, cos_BNK: torch.Tensor, sin_BNK: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs of ``x [B, N, heads, Dh]`` (in float32 or wider)."""
    acc = torch.promote_types(x_BNHD.dtype, torch.float32)
    x = x_BNHD.to(acc).unflatten(-1, (-1, 2))
    re, im = x[..., 0], x[..., 1]
    cos = cos_BNK[:, :, None, :].to(acc)
    sin = sin_BNK[:, :, None, :].to(acc)
    out = torch.stack((re * cos - im * sin, re * sin + im * cos), dim=-1)
    return out.flatten(-2).to(x_BNHD.dtype)
