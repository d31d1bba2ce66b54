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
Learned start/end tokens or text tokens are the caller's business: prepend/append rows to the
tables (the MUG-V release places its start token at row 0, column 0 and its end token at row
H-1, column W-1, each at a time of its own: a frame index of T+2 entries; mugv-dit builds
those tables).
"""

from __future__ import annotations

import torch


def default_split(head_dim: int) -> tuple[int, int, int]:
    """The MUG-V split: three equal parts of ``head_dim / 3`` channels (height, width, time)."""
    if head_dim % 6:
        raise ValueError(
            f"head_dim={head_dim} is not divisible by 6: pass an explicit split=(h, w, t) "
            "of even channel counts summing to head_dim"
        )
    part = head_dim // 3
    return (part, part, part)


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
    t, h, w = (int(v) for v in grid_thw)
    if min(t, h, w) <= 0:
        raise ValueError(f"grid_thw must be positive, got {grid_thw}")
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"head_dim must be positive and even, got {head_dim}")
    split = default_split(head_dim) if split is None else tuple(int(s) for s in split)
    if len(split) != 3 or sum(split) != head_dim or any(s < 0 or s % 2 for s in split):
        raise ValueError(
            f"split={split} must be three even channel counts (height, width, time) "
            f"summing to head_dim={head_dim}"
        )
    if frame_positions is None:
        pos_t = torch.arange(t, device=device, dtype=torch.float64)
    else:
        if tuple(frame_positions.shape) != (t,):
            raise ValueError(
                f"frame_positions must have shape [{t}], got {tuple(frame_positions.shape)}"
            )
        pos_t = frame_positions.to(device=device, dtype=torch.float64)
    pos_h = torch.arange(h, device=device, dtype=torch.float64)
    pos_w = torch.arange(w, device=device, dtype=torch.float64)

    def angles(pos: torch.Tensor, channels: int) -> torch.Tensor:
        j = torch.arange(channels // 2, device=device, dtype=torch.float64)
        inv_freq = theta ** (-2.0 * j / channels) if channels else j
        return pos[:, None] * inv_freq[None, :]

    ang_h = angles(pos_h, split[0])[None, :, None, :].expand(t, h, w, -1)
    ang_w = angles(pos_w, split[1])[None, None, :, :].expand(t, h, w, -1)
    ang_t = angles(pos_t, split[2])[:, None, None, :].expand(t, h, w, -1)
    ang = torch.cat((ang_h, ang_w, ang_t), dim=-1).reshape(t * h * w, head_dim // 2)
    return ang.cos().float(), ang.sin().float()
