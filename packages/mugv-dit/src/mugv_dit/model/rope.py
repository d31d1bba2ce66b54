"""Interleaved 3D rotary position embedding of video tokens (torch reference path).

The head dim ``Dh`` is cut into three equal contiguous parts (height, width, time), each an
ordinary 1D RoPE of ``Dh/3`` channels whose pair ``j`` rotates by ``pos * theta**(-6 j / Dh)``
(the MUG-V release's frequencies). Pairs are interleaved: channels ``(2i, 2i+1)`` form one
complex number. Tables are ``cos, sin`` of shape ``[N, Dh/2]`` float32.
"""

from __future__ import annotations

import torch


def rope3d_angles(
    grid_thw: tuple[int, int, int],
    head_dim: int,
    frame_positions_T: torch.Tensor,
    *,
    theta: float = 10000.0,
) -> torch.Tensor:
    """Rotation angles ``[T*H*W, Dh/2]`` (float64) for a time-major ``(t, h, w)`` token grid."""
    t, h, w = grid_thw
    if head_dim % 6:
        raise ValueError(f"head_dim={head_dim} must be divisible by 6 for 3D RoPE")
    part = head_dim // 3
    device = frame_positions_T.device
    j = torch.arange(part // 2, device=device, dtype=torch.float64)
    inv_freq = theta ** (-2.0 * j / part)
    pos_h = torch.arange(h, device=device, dtype=torch.float64)
    pos_w = torch.arange(w, device=device, dtype=torch.float64)
    pos_t = frame_positions_T.to(torch.float64)
    ang_h = (pos_h[:, None] * inv_freq)[None, :, None, :].expand(t, h, w, -1)
    ang_w = (pos_w[:, None] * inv_freq)[None, None, :, :].expand(t, h, w, -1)
    ang_t = (pos_t[:, None] * inv_freq)[:, None, None, :].expand(t, h, w, -1)
    return torch.cat((ang_h, ang_w, ang_t), dim=-1).reshape(t * h * w, head_dim // 2)


def dit_rope_tables(
    grid_thw: tuple[int, int, int],
    head_dim: int,
    frame_positions_BT: torch.Tensor,
    *,
    theta: float = 10000.0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin`` tables ``[B, N, Dh/2]`` for ``[start, video tokens..., end]``.

    The start token takes the position of the first video token, the end token that of the
    last one (as in the MUG-V release).
    """
    tables = []
    for frame_positions_T in frame_positions_BT:
        ang_MK = rope3d_angles(grid_thw, head_dim, frame_positions_T, theta=theta)
        tables.append(torch.cat((ang_MK[:1], ang_MK, ang_MK[-1:]), dim=0))
    ang_BNK = torch.stack(tables)
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
