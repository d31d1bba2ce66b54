"""Interleaved 3D rotary position embedding of MUG-DiT's token sequence.

The tables come from :mod:`mugv_kernels.rope` (the one 3D RoPE of mugv: head dim ``Dh`` cut
into three equal contiguous parts, height, width and time, each a 1D RoPE of ``Dh/3``
channels whose pair ``j`` rotates by ``pos * theta**(-6 j / Dh)``, the MUG-V release's
frequencies). Pairs are interleaved: channels ``(2i, 2i+1)`` form one complex number. Tables
are ``cos, sin`` of shape ``[N, Dh/2]``. Positions follow the release: a frame index of
``T + 2`` entries places the learned start/end tokens at their own times and at opposite
corners of the patch grid.
"""

from __future__ import annotations

import torch
from mugv_kernels.rope import grid_positions
from mugv_kernels.rope import rope3d_angles as angles_at_positions


def rope3d_angles(
    grid_thw: tuple[int, int, int],
    head_dim: int,
    frame_index_F: torch.Tensor,
    *,
    theta: float = 10000.0,
) -> torch.Tensor:
    """Rotation angles ``[T*H*W + 2, Dh/2]`` (float64) of ``[start, video tokens..., end]``.

    ``frame_index_F`` has ``T + 2`` entries (start, the ``T`` token frames, end), as in the
    MUG-V release: video token ``(t, h, w)`` sits at time ``fi[1 + t]``, row ``h``, column
    ``w`` (time-major order); the start token at time ``fi[0]``, row 0, column 0; the end
    token at time ``fi[T + 1]``, row ``H - 1``, column ``W - 1``.
    """
    t, h, w = grid_thw
    if head_dim % 6:
        raise ValueError(f"head_dim={head_dim} must be divisible by 6 for 3D RoPE")
    if tuple(frame_index_F.shape) != (t + 2,):
        raise ValueError(
            f"frame index must have T+2={t + 2} entries (start, {t} frames, end), "
            f"got shape {tuple(frame_index_F.shape)}"
        )
    fi = frame_index_F.to(torch.float64)
    corner = torch.tensor([[0.0, 0.0], [h - 1.0, w - 1.0]], device=fi.device, dtype=torch.float64)
    edge_N3 = torch.cat((corner, fi[[0, -1], None]), dim=1)  # [2, (row, col, time)]
    video_N3 = grid_positions(grid_thw, fi[1:-1], device=fi.device)
    positions_N3 = torch.cat((edge_N3[:1], video_N3, edge_N3[1:]), dim=0)
    return angles_at_positions(positions_N3, head_dim, theta=theta)


def default_frame_index(batch: int, frames: int, device=None) -> torch.Tensor:
    """The release's default frame index ``arange(T + 2)`` per sample, ``[B, T + 2]``."""
    return torch.arange(frames + 2, device=device)[None].expand(batch, frames + 2)


def dit_rope_tables(
    grid_thw: tuple[int, int, int],
    head_dim: int,
    frame_index_BF: torch.Tensor,
    *,
    theta: float = 10000.0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin`` tables ``[B, N, Dh/2]`` for ``[start, video tokens..., end]`` from the
    ``[B, T + 2]`` frame index (see :func:`rope3d_angles`)."""
    ang_BNK = torch.stack(
        [rope3d_angles(grid_thw, head_dim, fi_F, theta=theta) for fi_F in frame_index_BF]
    )
    return ang_BNK.cos().to(dtype), ang_BNK.sin().to(dtype)


def apply_rope_interleaved(
    x_BNHD: torch.Tensor, cos_BNK: torch.Tensor, sin_BNK: torch.Tensor
) -> torch.Tensor:
    """Rotate interleaved channel pairs of ``x [B, N, heads, Dh]`` (in float32 or wider)."""
    acc = torch.promote_types(x_BNHD.dtype, torch.float32)
    x = x_BNHD.to(acc).unflatten(-1, (-1, 2))
    x_re, x_im = x[..., 0], x[..., 1]
    cos = cos_BNK[:, :, None, :]
    sin = sin_BNK[:, :, None, :]
    out = torch.stack((x_re * cos - x_im * sin, x_re * sin + x_im * cos), dim=-1)
    return out.flatten(-2).to(x_BNHD.dtype)
