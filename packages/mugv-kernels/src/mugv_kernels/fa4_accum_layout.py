"""A float64 model of the dQ accumulator of FlashAttention-4 4.0.0b36's SM90 backward: where
its three kernels put each sequence's rows, for dense and varlen (``cu_seqlens_q``) queries.

Read from the b36 sources (``flash_attn/cute``). ``interface._flash_attn_bwd`` allocates per
head ``(total_q + (B + 1) * tile_m - 1) // tile_m * tile_m`` rows of ``width_alloc`` floats
(``torch.empty``; dense: ``round_up(seqlen_q, tile_m)`` rows per (batch, head)). Sequence ``b``
starts at row ``padded_offset_q(b) = (cu[b] + b * tile_m) // tile_m * tile_m`` in all three
kernels (``seqlen_info.SeqlenInfoQK`` / ``SeqlenInfo`` with ``tile=tile_m``) and spans
``R_b = round_up(len_b, tile_m)`` rows, in blocks of ``tile_m`` rows; block ``j`` of it is

* zeroed by the preprocess (``flash_bwd_preprocess.py``): ``tile_m * width_zero`` floats at
  ``(po_b + j * tile_m) * width_zero``;
* reduce-added by the main kernel (``flash_bwd_sm90.py``, ``dQaccum_store``), once per key
  block: a ``tile_m x width_write`` WGMMA fragment at ``(po_b + j * tile_m) * width_write``;
* read by the postprocess (``flash_bwd_postprocess.py``): ``tile_m * width_read`` floats at
  ``(po_b + j * tile_m) * width_read``, decoded as a ``tile_m x width_read`` fragment.

On SM90 (head dim <= 128) the kernel's width is ``round_up(head_dim, 16)``; allocation and
zeroing use ``round_up(head_dim, 32)``, and so did the postprocess in b36 (``fix="none"``). Our
fix (:mod:`mugv_kernels.fa4_sm90_dq_fix`) reads with the kernel's width (``"dense"``) and, for
varlen, starts the accumulator from zeros (``"dense+varlen"``). The fragment order is modelled
as column-major within a tile: any order that only the writer's width decodes behaves the same.

Legend: B sequences, T total query rows, D head dim, m tile_m.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

FIXES = ("none", "dense", "dense+varlen")

# The DiT's cross-attention as the GPU checks run it: (N video-token queries per sample, each
# sample's text-key lengths). N = 12,880 leaves no hole in b36's varlen dq accumulator for
# B <= 4; N = 12,864 (a multiple of 64) and the self-check's 320 do from B = 2.
CROSS_ATTENTION_CASES: tuple[tuple[int, tuple[int, ...]], ...] = (
    (12880, (77,)),
    (12880, (1, 512)),
    (12880, (300, 7, 512)),
    (12880, (512, 1, 64, 200)),
    (12864, (120, 512)),
    (320, (50, 19)),
)


def round_up(x: int, multiple: int) -> int:
    return (x + multiple - 1) // multiple * multiple


def sm90_tile_m(head_dim: int) -> int:
    """The backward's tile_m on SM90, non-causal (``interface._tile_size_bwd_sm90``)."""
    if head_dim <= 64:
        return 128
    if head_dim <= 96:
        return 64
    if head_dim <= 128:
        return 80
    raise ValueError(f"head dim {head_dim}: this model covers SM90 head dims <= 128")


@dataclass(frozen=True)
class AccumLayout:
    """Widths (floats per accumulator row) of the three kernels, and whether the buffer starts
    from zeros (else it holds whatever the allocator's memory held)."""

    tile_m: int
    width_alloc: int  # allocation and preprocess zeroing
    width_write: int  # main kernel
    width_read: int  # postprocess
    zero_on_alloc: bool


def sm90_layout(head_dim: int, fix: str, *, varlen: bool) -> AccumLayout:
    """The b36 SM90 layout at ``head_dim`` (<= 128, dKV not swapped) with ``fix`` applied."""
    if fix not in FIXES:
        raise ValueError(f"fix {fix!r} unknown; choose from {FIXES}")
    alloc, write = round_up(head_dim, 32), round_up(head_dim, 16)
    read = alloc if fix == "none" else write
    zero = fix == "dense+varlen" and varlen and read != alloc
    return AccumLayout(sm90_tile_m(head_dim), alloc, write, read, zero)


def padded_offsets(cu_seqlens: list[int], tile_m: int) -> list[int]:
    """``padded_offset_q`` of every sequence (rows)."""
    return [(c + b * tile_m) // tile_m * tile_m for b, c in enumerate(cu_seqlens[:-1])]


def accum_floats(cu_seqlens: list[int], layout: AccumLayout) -> int:
    """Floats per head of the varlen accumulator as allocated."""
    total_q, batch = cu_seqlens[-1], len(cu_seqlens) - 1
    m = layout.tile_m
    return (total_q + (batch + 1) * m - 1) // m * m * layout.width_alloc


def varlen_dq_accum_numel(cu_seqlens: list[int], num_heads: int, head_dim: int) -> int:
    """float32 elements of b36's varlen dQ accumulator on SM90 (all heads) for FA4 at
    ``head_dim``: the size to pre-fill the allocator's cache with (see
    :func:`mugv_kernels.attention.fill_freed_cuda_memory`)."""
    return num_heads * accum_floats(cu_seqlens, sm90_layout(head_dim, "none", varlen=True))


def dense_dq_accum_numel(batch: int, seqlen_q: int, num_heads: int, head_dim: int) -> int:
    """float32 elements of b36's dense dQ accumulator on SM90 (every batch and head)."""
    layout = sm90_layout(head_dim, "none", varlen=False)
    return batch * num_heads * round_up(seqlen_q, layout.tile_m) * layout.width_alloc


def spans(cu_seqlens: list[int], tile_m: int, width: int) -> list[tuple[int, int]]:
    """``[start, stop)`` floats of every sequence's blocks at ``width`` floats per row."""
    pos = padded_offsets(cu_seqlens, tile_m)
    lengths = [hi - lo for lo, hi in itertools.pairwise(cu_seqlens)]
    return [(po * width, (po + round_up(n, tile_m)) * width) for po, n in zip(pos, lengths)]


def holes_after(cu_seqlens: list[int], tile_m: int) -> list[int]:
    """Sequences ``b`` after which ``padded_offset_q`` skips a tile (closed form: ``len_b``
    a multiple of ``tile_m``, or ``cu[b] % tile_m + len_b % tile_m >= tile_m``)."""
    out = []
    for b in range(len(cu_seqlens) - 2):
        lo, n = cu_seqlens[b], cu_seqlens[b + 1] - cu_seqlens[b]
        if n % tile_m == 0 or lo % tile_m + n % tile_m >= tile_m:
            out.append(b)
    return out


def unzeroed_written(cu_seqlens: list[int], layout: AccumLayout) -> int:
    """Floats the main kernel adds to that neither the allocation nor the preprocess zeroed."""
    size = accum_floats(cu_seqlens, layout)
    zeroed = torch.full((size,), layout.zero_on_alloc, dtype=torch.bool)
    written = torch.zeros(size, dtype=torch.bool)
    for lo, hi in spans(cu_seqlens, layout.tile_m, layout.width_alloc):
        zeroed[lo:hi] = True
    for lo, hi in spans(cu_seqlens, layout.tile_m, layout.width_write):
        written[lo:hi] = True
    return int((written & ~zeroed).sum())


def simulate_dq(
    cu_seqlens: list[int],
    head_dim: int,
    layout: AccumLayout,
    *,
    fill: float = float("nan"),
    key_blocks: int = 3,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the three kernels' accumulator traffic in float64 -> ``(dq_read_TD, dq_true_TD)``.

    ``dq_true`` is random; the kernel adds it as ``key_blocks`` random summands (one per key
    block, as the atomic adds of the CTAs of different n-blocks); the buffer starts as
    ``fill`` (NaN: memory the caching allocator reused; 0: fresh memory) unless the layout
    zeroes it. Rows past a sequence's end are written as zeros (their dS is 0) and not read.
    """
    m, d = layout.tile_m, head_dim
    g = torch.Generator().manual_seed(seed)
    total = cu_seqlens[-1]
    dq_true = torch.randn(total, d, dtype=torch.float64, generator=g)
    parts = [torch.randn(total, d, dtype=torch.float64, generator=g) for _ in range(key_blocks - 1)]
    parts.append(dq_true - sum(parts, torch.zeros_like(dq_true)))
    buf = torch.full((accum_floats(cu_seqlens, layout),), fill, dtype=torch.float64)
    if layout.zero_on_alloc:
        buf.zero_()
    for lo, hi in spans(cu_seqlens, m, layout.width_alloc):  # preprocess
        buf[lo:hi] = 0.0
    pos = padded_offsets(cu_seqlens, m)
    dq_read = torch.full_like(dq_true, float("nan"))
    blocks = [  # (first accumulator row of the block, first query row, valid rows)
        (po + j * m, lo + j * m, min(m, hi - lo - j * m))
        for po, (lo, hi) in zip(pos, itertools.pairwise(cu_seqlens))
        for j in range(round_up(hi - lo, m) // m)
    ]
    for acc_row, row, rows in blocks:  # main kernel: one reduce-add per key block
        start = acc_row * layout.width_write
        for part in parts:
            tile = torch.zeros(m, layout.width_write, dtype=torch.float64)
            tile[:rows, :d] = part[row : row + rows]
            buf[start : start + m * layout.width_write] += tile.t().reshape(-1)
    for acc_row, row, rows in blocks:  # postprocess
        start = acc_row * layout.width_read
        tile = buf[start : start + m * layout.width_read].reshape(layout.width_read, m).t()
        dq_read[row : row + rows] = tile[:rows, :d]
    return dq_read, dq_true


__all__ = [
    "FIXES",
    "AccumLayout",
    "accum_floats",
    "dense_dq_accum_numel",
    "holes_after",
    "padded_offsets",
    "round_up",
    "simulate_dq",
    "sm90_layout",
    "sm90_tile_m",
    "spans",
    "unzeroed_written",
    "varlen_dq_accum_numel",
]
