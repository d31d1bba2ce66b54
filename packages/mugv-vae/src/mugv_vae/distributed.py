"""Process-group set-up shared by the encode stage and the trainer (torchrun conventions)."""

from __future__ import annotations

import os

import torch


def init_distributed() -> tuple[int, int, int]:
    """(rank, world, local_rank); initialises the default process group under torchrun
    (NCCL with CUDA, gloo otherwise). A single process needs no group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    if world > 1:
        return torch.distributed.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()
