"""Parallelism for VAE training, applied from outside the model (the model never imports this).

Order (see ``Trainer``): build on the device -> ``apply_fsdp2`` or ``apply_ddp``.
"""

from __future__ import annotations

import torch
from torch import nn


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
