"""Parallelism for VAE training, applied from outside the model (the model never imports this).

Order (see ``Trainer``): build on the device -> ``apply_fsdp2`` or ``apply_ddp``.
"""

from __future__ import annotations

import os

import torch
from torch import nn


def init_distributed() -> tuple[int, int, int]:
    """(rank, world, local_rank); initialises the default process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    if world > 1:
        return torch.distributed.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def apply_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """Wrap in DistributedDataParallel (gradients all-reduced, full replicas)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def apply_fsdp2(model: nn.Module) -> nn.Module:
    """Shard parameters with FSDP2 (``fully_shard``): every temporal res-block, every trunk
    block, then the root."""
    from torch.distributed.fsdp import fully_shard

    from mugv_vae.model.temporal import ResBlock3d

    units: list[nn.Module] = [m for m in model.modules() if isinstance(m, ResBlock3d)]
    trunk = model.trunk
    if hasattr(trunk, "encoder"):
        units += [*trunk.encoder.down_blocks, trunk.encoder.mid_block]
        units += [*trunk.decoder.up_blocks, trunk.decoder.mid_block]
    for unit in units:
        fully_shard(unit)
    fully_shard(model)
    return model
