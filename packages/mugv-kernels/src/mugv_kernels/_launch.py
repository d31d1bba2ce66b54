"""Launch-size heuristics shared by the Triton wrappers."""

from __future__ import annotations

import functools

import torch


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (>= 1)."""
    return 1 << max(0, (int(n) - 1).bit_length())


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Multiprocessors of a CUDA device; 4 for the CPU interpreter (keeps the grid tiny)."""
    if device.type != "cuda":
        return 4
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


#: Launch parameters per kernel; benchmarks may override entries to sweep them.
#: ``tile_elems``: elements of one ``BLOCK_R x BLOCK_D`` tile; ``programs_per_sm``: grid
#: target; ``warp_elems``: tile elements per warp (sets ``num_warps``, clamped to 4..16);
#: ``max_heads`` (qk, qk_bwd): most heads in one ``[tokens, heads, head_dim]`` tile;
#: ``split`` (qk, qk_bwd): head dim as a power of two + the rest (72 = 64 + 8), else one padded tile;
#: ``dw_reduce`` (qk_bwd): sum weight-gradient terms per step instead of whole-tile registers;
#: ``group_kernel`` (gn): one program per (sample, group) when there are at least
#: ``group_min_per_sm`` groups per multiprocessor, else chunk-parallel statistics + apply;
#: ``max_block_c`` (gn_cl): widest channel tile of the channels-last backward kernels; ``stat_tiles``:
#: position tiles per statistics program (fewer per-chunk partials to write and combine).
#: Why these values (H100 sweeps): docs/benchmarks/kernels/launch-defaults.md.
TUNING: dict[str, dict[str, int]] = {
    "modln_fwd": {"tile_elems": 2048, "programs_per_sm": 64, "warp_elems": 512},
    "modln_bwd": {"tile_elems": 2048, "programs_per_sm": 4, "warp_elems": 256},
    "gated_fwd": {"tile_elems": 16384, "programs_per_sm": 64, "warp_elems": 512},
    "gated_bwd": {"tile_elems": 2048, "programs_per_sm": 4, "warp_elems": 256},
    "qk": {
        "tile_elems": 4096,
        "programs_per_sm": 32,
        "warp_elems": 512,
        "max_heads": 16,
        "split": 1,
    },
    "qk_bwd": {
        "tile_elems": 2048,
        "programs_per_sm": 16,
        "warp_elems": 256,
        "max_heads": 16,
        "split": 1,
        "dw_reduce": 0,
    },
    "gn": {"block": 4096, "num_warps": 8, "group_kernel": 0, "group_min_per_sm": 2},
    # channels-last GroupNorm: tiles of (gn.block // BLOCK_C) positions x BLOCK_C channels
    "gn_cl": {"max_block_c": 256, "num_warps": 8, "stat_tiles": 8},
    # channels-last forward (statistics + apply) and bias_residual: tiles of
    # tile_elems // next_pow2(C) positions x all channels, stat_tiles tiles per statistics
    # program
    "gn_cl_fwd": {"tile_elems": 8192, "stat_tiles": 8, "num_warps": 8},
    # cooperative two-pass GroupNorm (x read from DRAM once): items of ~item_elems elements,
    # at most programs_per_sm co-resident programs per multiprocessor
    "gn_coop": {
        "enabled": 0,  # off: slower than the chunked kernels so far (see the docs page)
        "item_elems": 32768,
        "tile": 4096,
        "num_warps": 8,
        "programs_per_sm": 4,
        "min_spatial": 1024,
    },
}


def row_tiling(
    n: int, seq_len: int, hidden: int, device: torch.device, key: str
) -> tuple[int, int, int, int]:
    """Tiling of ``[N, L, D]`` row kernels: ``(BLOCK_D, BLOCK_R, rows_per_prog, num_warps)``.

    A program handles ``rows_per_prog`` consecutive tokens of one sample in tiles of
    ``BLOCK_R x BLOCK_D``; the grid aims at ``programs_per_sm`` programs per multiprocessor
    so that per-sample partial sums stay few. Parameters come from ``TUNING[key]``.
    """
    tune = TUNING[key]
    block_d = next_pow2(hidden)
    block_r = max(1, min(16, tune["tile_elems"] // block_d, next_pow2(seq_len)))
    target = max(1, tune["programs_per_sm"] * sm_count(device))
    per_sample = max(1, target // max(1, n))
    rows = -(-seq_len // per_sample)
    rows = max(block_r, -(-rows // block_r) * block_r)
    num_warps = max(4, min(16, block_r * block_d // tune["warp_elems"]))
    return block_d, block_r, rows, num_warps
