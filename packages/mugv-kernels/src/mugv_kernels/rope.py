"""3D rotary-embedding tables for video tokens.

The head dim ``Dh`` is cut into three contiguous parts of rotary *channels*, given as
``split = (height, width, time)`` in that order (the order of the MUG-V release, which
concatenates height, width and time frequencies). Each part is an ordinary 1D RoPE of its own
size ``d``: channel pair ``j`` of the part rotates with angle ``pos * theta ** (-2 j / d)``,
where ``pos`` is the token's row, column or frame index.

Default split: ``(Dh/3, Dh/3, Dh/3)`` when ``Dh`` is divisible by 6 (e.g. 24/24/24 for the
release's head dim 72; its frequencies ``1 / theta ** (6 j / Dh)`` are exactly the per-part
formula above with ``d = Dh / 3``). Other head dims need an explicit ``split``.

Tokens are ordered time-major, ``(t, h, w)`` flattened, as after patchifying ``[T, H, W]``.
Tokens outside the grid (learned start/end tokens) take their angles from
:func:`rope3d_angles` at positions of their own (the MUG-V release places its start token at
row 0, column 0 and its end token at row H-1, column W-1, each at a time of its own: a frame
index of T+2 entries). :func:`dit_token_positions` places MUG-DiT's ``[start, video..., end]``
tokens so and :func:`dit_rope_tables` builds their tables: the only 3D RoPE tables of mugv,
used by mugv-dit's model (training) and mugv-infer's transformer (inference) alike.

Frame index clamp: the release precomputes its time frequencies for 480 positions
(``precompute_freqs_cis_for_3drope(..., time_end=480)``, "videos' length up to 1min") and
clamps the frame index into that table (``get_freq_cis``: ``clamp(0, 480 - 1)``), in its model
forward, so for training and inference alike: frame indices are clamped to
``[0, MAX_FRAME_INDEX]`` = ``[0, 479]`` here, once, for both.

Legend: B batch, F = T + 2 frame-index entries, N = T*H*W + 2 tokens, K = Dh/2 pairs.
"""

from __future__ import annotations

import torch

MAX_FRAME_INDEX = 479
"""The release clamps frame indices to ``[0, MAX_FRAME_INDEX]`` (a 480-entry time table)."""


def default_split(head_dim: int) -> tuple[int, int, int]:
    """The MUG-V split: three equal parts of ``head_dim / 3`` channels (height, width, time)."""
    if head_dim % 6:
        raise ValueError(
            f"head_dim={head_dim} is not divisible by 6: pass an explicit split=(h, w, t) "
            "of even channel counts summing to head_dim"
        )
    part = head_dim // 3
    return (part, part, part)


def _checked_split(head_dim: int, split: tuple[int, int, int] | None) -> tuple[int, int, int]:
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"head_dim must be positive and even, got {head_dim}")
    split = default_split(head_dim) if split is None else tuple(int(s) for s in split)
    if len(split) != 3 or sum(split) != head_dim or any(s < 0 or s % 2 for s in split):
        raise ValueError(
            f"split={split} must be three even channel counts (height, width, time) "
            f"summing to head_dim={head_dim}"
        )
    return split


def rope3d_angles(
    positions_N3: torch.Tensor,
    head_dim: int,
    *,
    theta: float = 10000.0,
    split: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """Rotation angles ``[N, head_dim // 2]`` (float64) of ``N`` tokens at ``positions_N3``
    = (row, column, time) each: the height, width and time parts in that order (see the
    module docstring); ``split`` as in :func:`rope3d_frequencies`."""
    split = _checked_split(head_dim, split)
    if positions_N3.dim() != 2 or positions_N3.shape[1] != 3:
        raise ValueError(
            f"positions must have shape [N, 3] (row, column, time), got {tuple(positions_N3.shape)}"
        )
    pos = positions_N3.to(torch.float64)

    def angles(pos_N: torch.Tensor, channels: int) -> torch.Tensor:
        j = torch.arange(channels // 2, device=pos_N.device, dtype=torch.float64)
        inv_freq = theta ** (-2.0 * j / channels) if channels else j
        return pos_N[:, None] * inv_freq[None, :]

    return torch.cat([angles(pos[:, i], split[i]) for i in range(3)], dim=-1)


def grid_positions(
    grid_thw: tuple[int, int, int], frame_positions: torch.Tensor | None = None, device=None
) -> torch.Tensor:
    """(row, column, time) positions ``[T*H*W, 3]`` (float64) of a token grid in time-major
    order; frame ``t`` sits at time ``frame_positions[t]`` (default ``t``)."""
    t, h, w = (int(v) for v in grid_thw)
    if frame_positions is None:
        pos_t = torch.arange(t, device=device, dtype=torch.float64)
    else:
        if tuple(frame_positions.shape) != (t,):
            raise ValueError(
                f"frame_positions must have shape [{t}], got {tuple(frame_positions.shape)}"
            )
        pos_t = frame_positions.to(device=device, dtype=torch.float64)
    pos_h = torch.arange(h, device=pos_t.device, dtype=torch.float64)
    pos_w = torch.arange(w, device=pos_t.device, dtype=torch.float64)
    tt, hh, ww = torch.meshgrid(pos_t, pos_h, pos_w, indexing="ij")
    return torch.stack((hh, ww, tt), dim=-1).reshape(t * h * w, 3)


def rope3d_frequencies(
    grid_thw: tuple[int, int, int],
    head_dim: int,
    *,
    theta: float = 10000.0,
    split: tuple[int, int, int] | None = None,
    frame_positions: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Build the ``cos, sin`` tables, each ``[T*H*W, head_dim // 2]`` float32.

    Args:
        grid_thw: token grid ``(T, H, W)`` after patchifying.
        head_dim: attention head dim ``Dh`` (even).
        theta: RoPE base.
        split: rotary channels for ``(height, width, time)``, each even, summing to ``Dh``;
            ``None`` takes :func:`default_split`.
        frame_positions: optional ``[T]`` positions of the frames on the time axis (e.g. the
            frame indices of a clip with gaps); default ``0..T-1``.
        device: where to build the tables.
    """
    if min(int(v) for v in grid_thw) <= 0:
        raise ValueError(f"grid_thw must be positive, got {grid_thw}")
    split = _checked_split(head_dim, split)
    positions = grid_positions(grid_thw, frame_positions, device=device)
    ang = rope3d_angles(positions, head_dim, theta=theta, split=split)
    return ang.cos().float(), ang.sin().float()


def default_frame_index(batch: int, frames: int, device=None) -> torch.Tensor:
    """The release's default frame index ``arange(T + 2)`` for every sample, ``[B, T + 2]``."""
    return torch.arange(frames + 2, device=device)[None].expand(batch, frames + 2)


def dit_token_positions(
    grid_thw: tuple[int, int, int],
    frame_index_F: torch.Tensor,
    *,
    max_frame_index: int = MAX_FRAME_INDEX,
) -> torch.Tensor:
    """(row, column, time) positions ``[T*H*W + 2, 3]`` (float64) of MUG-DiT's tokens
    ``[start, video tokens (time-major)..., end]`` from a frame index of ``T + 2`` entries
    (start, the ``T`` token frames, end), clamped to ``[0, max_frame_index]`` as the release:
    the start token at (0, 0, ``fi[0]``), video token ``(t, h, w)`` at (h, w, ``fi[1 + t]``),
    the end token at (H - 1, W - 1, ``fi[T + 1]``)."""
    t, h, w = (int(v) for v in grid_thw)
    if tuple(frame_index_F.shape) != (t + 2,):
        raise ValueError(
            f"frame index must have T+2={t + 2} entries (start, {t} frames, end), "
            f"got shape {tuple(frame_index_F.shape)}"
        )
    fi = frame_index_F.detach().to(torch.float64).clamp(0, max_frame_index)
    corner = torch.tensor([[0.0, 0.0], [h - 1.0, w - 1.0]], device=fi.device, dtype=torch.float64)
    edge_23 = torch.cat((corner, fi[[0, -1], None]), dim=1)  # [2, (row, column, time)]
    video_M3 = grid_positions(grid_thw, fi[1:-1], device=fi.device)
    return torch.cat((edge_23[:1], video_M3, edge_23[1:]), dim=0)


def dit_rope_tables(
    grid_thw: tuple[int, int, int],
    head_dim: int,
    frame_index_BF: torch.Tensor,
    *,
    theta: float = 10000.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin`` tables ``[B, N, Dh/2]`` of MUG-DiT's tokens (:func:`dit_token_positions`)
    from a ``[B, T + 2]`` frame index: computed in float64 on the frame index's device, then
    cast to ``dtype`` and moved to ``device``."""
    t = int(grid_thw[0])
    if frame_index_BF.ndim != 2 or frame_index_BF.shape[1] != t + 2:
        raise ValueError(
            f"frame_index must have shape [B, T+2] with T={t} latent frames after patching "
            f"(start, {t} frames, end), got {tuple(frame_index_BF.shape)}"
        )
    ang_BNK = torch.stack(
        [
            rope3d_angles(dit_token_positions(grid_thw, fi_F), head_dim, theta=theta)
            for fi_F in frame_index_BF
        ]
    )
    return ang_BNK.cos().to(device=device, dtype=dtype), ang_BNK.sin().to(
        device=device, dtype=dtype
    )


def apply_rope_interleaved(
    x_BNHD: torch.Tensor, cos_BNK: torch.Tensor, sin_BNK: torch.Tensor
) -> torch.Tensor:
    """Rotate interleaved channel pairs ``(2i, 2i+1)`` of ``x [B, N, heads, Dh]`` by the
    tables ``[B, N, Dh/2]``, in float32 (or wider), returned in the input dtype."""
    acc = torch.promote_types(x_BNHD.dtype, torch.float32)
    x = x_BNHD.to(acc).unflatten(-1, (-1, 2))
    re, im = x[..., 0], x[..., 1]
    cos = cos_BNK[:, :, None, :].to(acc)
    sin = sin_BNK[:, :, None, :].to(acc)
    out = torch.stack((re * cos - im * sin, re * sin + im * cos), dim=-1)
    return out.flatten(-2).to(x_BNHD.dtype)
