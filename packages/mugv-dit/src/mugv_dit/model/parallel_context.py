"""Where a model replica sits in the parallel layout, and how one token sequence is laid out
over the ranks: the only parallel facts MUGDiT reads.

:class:`ParallelContext` is built once from Megatron's ``parallel_state`` by
:func:`mugv_dit.parallel.parallel_context` (the trainer) or is :meth:`ParallelContext.single`
(one process); the model never reads the globals itself. :class:`TokenLayout` turns it into
the sequence operations of a forward pass: pad + context-parallel cut, sequence-parallel
scatter / gather, context-parallel gather.

Shapes: B batch, N tokens (of the shard named by the method), C channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core.tensor_parallel import (
    gather_from_sequence_parallel_region,
    scatter_to_sequence_parallel_region,
)

from mugv_dit.model.context_parallel import gather_sequence, shard_bounds


@dataclass(frozen=True)
class ParallelContext:
    """Ranks and sizes of this process in the tensor- (TP), pipeline- (PP) and context-
    parallel (CP) groups, and the CP group (None without CP). The sizes must match the
    model's TransformerConfig (MUGDiT checks)."""

    tp_rank: int = 0
    tp_size: int = 1
    pp_rank: int = 0
    pp_size: int = 1
    cp_rank: int = 0
    cp_size: int = 1
    cp_group: dist.ProcessGroup | None = None

    @classmethod
    def single(cls) -> ParallelContext:
        """One process, no model parallelism."""
        return cls()


@dataclass(frozen=True)
class TokenLayout:
    """One sequence of ``n_real`` tokens over the ranks: zero-padded to ``n_padded`` (a
    multiple of CP, x TP with sequence parallelism), cut into contiguous CP shards
    ``[lo, hi)``; with sequence parallelism each CP shard is split again over the TP ranks
    outside attention / MLP."""

    n_real: int
    n_padded: int
    lo: int
    hi: int
    parallel: ParallelContext
    sequence_parallel: bool

    @classmethod
    def of(cls, n_real: int, parallel: ParallelContext, sequence_parallel: bool) -> TokenLayout:
        mult = parallel.cp_size * (parallel.tp_size if sequence_parallel else 1)
        n_padded = n_real + (-n_real) % mult
        lo, hi = shard_bounds(n_padded, parallel.cp_size, parallel.cp_rank)
        return cls(n_real, n_padded, lo, hi, parallel, sequence_parallel)

    def cp_shard(self, x_BN_: torch.Tensor) -> torch.Tensor:
        """This rank's CP shard (padding included) of a full-sequence tensor ``[B, N, ...]``."""
        pad = self.n_padded - x_BN_.shape[1]
        if pad > 0:
            x_BN_ = torch.cat([x_BN_, x_BN_.new_zeros(x_BN_.shape[0], pad, *x_BN_.shape[2:])], 1)
        return x_BN_[:, self.lo : self.hi]

    def sp_shard(self, x_BN_: torch.Tensor) -> torch.Tensor:
        """This TP rank's slice of a CP-shard tensor (itself without sequence parallelism)."""
        if not self.sequence_parallel:
            return x_BN_
        n = (self.hi - self.lo) // self.parallel.tp_size
        return x_BN_[:, self.parallel.tp_rank * n : (self.parallel.tp_rank + 1) * n]

    def scatter_sp(self, x_BNC: torch.Tensor) -> torch.Tensor:
        """CP shard -> this TP rank's SP slice (backward all-gathers the grad)."""
        if not self.sequence_parallel:
            return x_BNC
        return scatter_to_sequence_parallel_region(x_BNC.transpose(0, 1).contiguous()).transpose(
            0, 1
        )

    def gather_sp(self, x_BNC: torch.Tensor) -> torch.Tensor:
        """SP slices -> the CP shard, for replicated layers after the blocks (backward just
        splits the grad)."""
        if not self.sequence_parallel:
            return x_BNC
        x_NBC = gather_from_sequence_parallel_region(
            x_BNC.transpose(0, 1).contiguous(), tensor_parallel_output_grad=False
        )
        return x_NBC.transpose(0, 1)

    def gather_cp(self, x_BN_: torch.Tensor) -> torch.Tensor:
        """CP shards -> the whole padded sequence."""
        if self.parallel.cp_group is None:
            return x_BN_
        return gather_sequence(x_BN_, self.parallel.cp_group)
