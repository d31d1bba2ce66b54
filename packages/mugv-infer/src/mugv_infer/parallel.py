"""Multi-GPU generation: Ulysses sequence parallelism and CFG parallelism.

Applied from outside a plain model / pipeline (the model never imports this module):

* :func:`apply_sequence_parallel` - every rank of ``sp_group`` holds ``1/P`` of the token
  sequence (padded to a multiple of P) through the blocks; around self-attention q/k/v are
  exchanged all-to-all (heads scattered, sequence gathered), so each rank attends over the
  whole sequence with ``heads/P`` heads, and back. Cross-attention, MLP and modulation are
  per token. The final layer's output is all-gathered.
* :func:`apply_cfg_parallel` - the conditional and unconditional branches of classifier-free
  guidance run on the two ranks of ``cfg_group``; their predictions are all-gathered.

Both compose: ``world = cfg x sp`` ranks; rank ``r`` is CFG rank ``r // sp`` and SP rank
``r % sp`` (:func:`init_parallel`). Every rank draws the same noise (same seed), so all ranks
hold the same latents and the same output. Launch with ``torchrun``.

Legend: B batch, N tokens (full, padded), S = N / P tokens of this rank, H heads, D head dim.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from mugv_kernels.attention import dense_attention


@dataclass
class ParallelGroups:
    """Process groups of one rank (None when that kind of parallelism is off)."""

    sp_group: object | None
    sp_size: int
    cfg_group: object | None
    cfg_size: int
    rank: int
    world: int


def init_parallel(
    sp_size: int = 1, cfg_size: int = 1, backend: str | None = None
) -> ParallelGroups:
    """Initialise torch.distributed from the torchrun environment (if needed) and build the
    SP and CFG groups. ``world`` must equal ``cfg_size * sp_size``."""
    if cfg_size not in (1, 2):
        raise ValueError(f"cfg parallel size must be 1 or 2, got {cfg_size}")
    if sp_size < 1:
        raise ValueError(f"sequence parallel size must be >= 1, got {sp_size}")
    if sp_size * cfg_size == 1:
        return ParallelGroups(None, 1, None, 1, 0, 1)
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            raise ValueError(
                f"sp={sp_size} x cfg={cfg_size} needs {sp_size * cfg_size} processes: launch with "
                f"torchrun --nproc_per_node {sp_size * cfg_size}"
            )
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    world, rank = dist.get_world_size(), dist.get_rank()
    if world != sp_size * cfg_size:
        raise ValueError(
            f"world size {world} != sequence parallel {sp_size} x cfg parallel {cfg_size}"
        )
    sp_group = cfg_group = None
    # every rank creates every group, in the same order (torch.distributed requires it)
    for c in range(cfg_size):
        ranks = [c * sp_size + s for s in range(sp_size)]
        group = dist.new_group(ranks)
        if rank in ranks and sp_size > 1:
            sp_group = group
    for s in range(sp_size):
        ranks = [c * sp_size + s for c in range(cfg_size)]
        group = dist.new_group(ranks)
        if rank in ranks and cfg_size > 1:
            cfg_group = group
    return ParallelGroups(sp_group, sp_size, cfg_group, cfg_size, rank, world)


class UlyssesSequenceParallel:
    """Token sharding + all-to-all attention over one process group."""

    def __init__(self, group):
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def shard(self, x_BN_: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of dim 1 (zero-padded to a multiple of P)."""
        n = x_BN_.shape[1]
        pad = (-n) % self.size
        if pad:
            x_BN_ = torch.cat([x_BN_, x_BN_.new_zeros(x_BN_.shape[0], pad, *x_BN_.shape[2:])], 1)
        s = x_BN_.shape[1] // self.size
        return x_BN_[:, self.rank * s : (self.rank + 1) * s].contiguous()

    def gather(self, x_BS_: torch.Tensor) -> torch.Tensor:
        """All ranks' slices concatenated along dim 1 (padding kept)."""
        parts = [torch.empty_like(x_BS_) for _ in range(self.size)]
        dist.all_gather(parts, x_BS_.contiguous(), group=self.group)
        return torch.cat(parts, dim=1)

    def _all_to_all(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()  # before empty_like: it would copy a permuted layout
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x, group=self.group)
        return out

    def attention(self, q_BSHD, k_BSHD, v_BSHD, n_real: int, backend: str) -> torch.Tensor:
        """Full-sequence attention of this rank's tokens -> ``[B, S, H, D]``."""
        p = self.size
        b, s, h, d = q_BSHD.shape
        if h % p:
            raise ValueError(f"{h} heads cannot be split over sequence parallel size {p}")
        # seq -> heads: [3, B, S, P, H/P, D] -> chunk j (heads j) to rank j
        qkv = torch.stack([q_BSHD, k_BSHD, v_BSHD]).view(3, b, s, p, h // p, d)
        recv = self._all_to_all(qkv.permute(3, 0, 1, 2, 4, 5))  # [P (seq chunk), 3, B, S, H/P, D]
        q, k, v = recv.permute(1, 2, 0, 3, 4, 5).reshape(3, b, p * s, h // p, d)
        out = dense_attention(
            q[:, :n_real], k[:, :n_real], v[:, :n_real].contiguous(), backend, needs_backward=False
        )
        if p * s > n_real:  # padding tokens are never keys; their outputs are zero
            out = torch.nn.functional.pad(out, (0, 0, 0, 0, 0, p * s - n_real))
        # heads -> seq: [P (seq chunk), B, S, H/P, D] -> chunk j (tokens j) to rank j
        back = self._all_to_all(out.view(b, p, s, h // p, d).permute(1, 0, 2, 3, 4))
        return back.permute(1, 2, 0, 3, 4).reshape(b, s, h, d)  # [B, S, P (head chunk)...]


class CFGParallel:
    """Rank 0 of the group computes the conditional branch, rank 1 the unconditional."""

    def __init__(self, group):
        self.group = group
        self.rank = dist.get_rank(group)
        if dist.get_world_size(group) != 2:
            raise ValueError("CFG parallelism needs a group of exactly 2 ranks")

    def exchange(self, pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [torch.empty_like(pred) for _ in range(2)]
        dist.all_gather(parts, pred, group=self.group)
        return parts[0], parts[1]


def apply_sequence_parallel(transformer, group) -> None:
    """Shard the sequence of ``transformer`` over ``group`` (Ulysses)."""
    sp = UlyssesSequenceParallel(group)
    heads = transformer.config.num_heads
    if heads % sp.size:
        raise ValueError(f"num_heads={heads} not divisible by sequence parallel size {sp.size}")
    transformer.sequence_parallel = sp
    for block in transformer.blocks:
        block.self_attention.sequence_parallel = sp


def apply_cfg_parallel(pipe, group) -> None:
    """Run the two CFG branches of ``pipe`` on the two ranks of ``group``."""
    pipe.cfg_parallel = CFGParallel(group)


def parallelize_pipeline(pipe, groups: ParallelGroups) -> None:
    """Apply what ``groups`` asks for: sequence parallel first, then CFG parallel."""
    if groups.sp_group is not None:
        apply_sequence_parallel(pipe.transformer, groups.sp_group)
    if groups.cfg_group is not None:
        apply_cfg_parallel(pipe, groups.cfg_group)
