"""All-to-all ("Ulysses") sequence parallelism over a context-parallel process group.

Outside attention every context-parallel (CP) rank holds a contiguous shard of ``S`` tokens
(rank ``r``: positions ``[r*S, (r+1)*S)`` of the padded sequence) with all local heads.
Self-attention needs every token, so its q/k/v go through one all-to-all that scatters heads
and gathers the sequence (``[B, S, H, D]`` -> ``[B, cp*S, H/cp, D]``), and its output through
the inverse. Everything else (modulation, cross-attention to the replicated text, MLP, final
layer) is per token and runs on the shard.

Shapes: B batch, S tokens of this rank's shard, H heads held before the exchange, D head dim.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _seq_to_heads(x_BSHD: torch.Tensor, group) -> torch.Tensor:
    cp = dist.get_world_size(group)
    b, s, h, d = x_BSHD.shape
    if h % cp:
        raise ValueError(f"{h} heads per rank not divisible by context_parallel={cp}")
    send_CBSHD = x_BSHD.reshape(b, s, cp, h // cp, d).permute(2, 0, 1, 3, 4).contiguous()
    recv_CBSHD = torch.empty_like(send_CBSHD)
    dist.all_to_all_single(recv_CBSHD, send_CBSHD, group=group)
    # chunk i came from CP rank i, i.e. holds sequence positions [i*S, (i+1)*S)
    return recv_CBSHD.permute(1, 0, 2, 3, 4).reshape(b, cp * s, h // cp, d)


def _heads_to_seq(y_BNHD: torch.Tensor, group) -> torch.Tensor:
    cp = dist.get_world_size(group)
    b, n, h, d = y_BNHD.shape
    if n % cp:
        raise ValueError(f"sequence of {n} tokens not divisible by context_parallel={cp}")
    send_CBSHD = y_BNHD.reshape(b, cp, n // cp, h, d).transpose(0, 1).contiguous()
    recv_CBSHD = torch.empty_like(send_CBSHD)
    dist.all_to_all_single(recv_CBSHD, send_CBSHD, group=group)
    # chunk j came from CP rank j, i.e. holds head group j
    return recv_CBSHD.permute(1, 2, 0, 3, 4).reshape(b, n // cp, cp * h, d)


class _SeqToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_BSHD, group):
        ctx.group = group
        return _seq_to_heads(x_BSHD, group)

    @staticmethod
    def backward(ctx, grad_BNHD):
        return _heads_to_seq(grad_BNHD, ctx.group), None


class _HeadsToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y_BNHD, group):
        ctx.group = group
        return _heads_to_seq(y_BNHD, group)

    @staticmethod
    def backward(ctx, grad_BSHD):
        return _seq_to_heads(grad_BSHD, ctx.group), None


class _GatherSequence(torch.autograd.Function):
    """All-gather token shards; the gradient of each shard is its slice (no reduction)."""

    @staticmethod
    def forward(ctx, x_BS_, group):
        ctx.group = group
        ctx.rank = dist.get_rank(group)
        ctx.shard = x_BS_.shape[1]
        cp = dist.get_world_size(group)
        parts = [torch.empty_like(x_BS_) for _ in range(cp)]
        dist.all_gather(parts, x_BS_.contiguous(), group=group)
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx, grad_BN_):
        lo = ctx.rank * ctx.shard
        return grad_BN_[:, lo : lo + ctx.shard].contiguous(), None


def seq_to_heads(x_BSHD: torch.Tensor, group) -> torch.Tensor:
    """``[B, S, H, D]`` sequence shard -> ``[B, cp*S, H/cp, D]`` full sequence, head group of
    this rank (autograd: the inverse exchange)."""
    return _SeqToHeads.apply(x_BSHD, group)


def heads_to_seq(y_BNHD: torch.Tensor, group) -> torch.Tensor:
    """Inverse of :func:`seq_to_heads`: ``[B, N, H/cp, D]`` -> ``[B, N/cp, H, D]``."""
    return _HeadsToSeq.apply(y_BNHD, group)


def gather_sequence(x_BSC: torch.Tensor, group) -> torch.Tensor:
    """``[B, S, ...]`` shards -> ``[B, cp*S, ...]`` on every rank; backward keeps this rank's
    slice of the gradient (each rank's loss is the same full loss, so the shard contributions
    of all ranks add up to the full gradient in the data-parallel x context-parallel reduce)."""
    return _GatherSequence.apply(x_BSC, group)


def shard_bounds(n_padded: int, cp_size: int, cp_rank: int) -> tuple[int, int]:
    """Token range ``[lo, hi)`` of a CP rank in a sequence padded to a multiple of cp."""
    if n_padded % cp_size:
        raise ValueError(f"padded length {n_padded} not divisible by context_parallel={cp_size}")
    shard = n_padded // cp_size
    return cp_rank * shard, (cp_rank + 1) * shard
