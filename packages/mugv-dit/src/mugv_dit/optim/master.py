"""The weights the optimizer really updates, and EMAs of them.

A bf16 parameter is its fp32 master rounded to 8 bits of mantissa: an update smaller than
half a bf16 ulp moves the master but not the parameter, so an average of the bf16 parameters
misses every such update. Every EMA of the project (mugv-dit's ``train.ema_decay`` EMA,
mugv-align's power EMAs) averages the masters through this module:

* :func:`master_params` -- per parameter, the fp32 master this rank holds (the whole tensor,
  or under Megatron's distributed optimizer the flat shard ``[start, end)`` it updates);
* :func:`lerp_to_masters_` -- ``ema <- ema + w (master - ema)`` on the elements this rank
  holds, noting the sharded ones;
* :func:`sync_sharded_` -- one sum-reduce over the data-parallel group that makes every
  rank's EMA whole again; called before an EMA is read, written or checkpointed.

And the dtype rule of the policy (:func:`compute_dtype`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn


def compute_dtype(bf16: bool, device: torch.device | str) -> torch.dtype:
    """The dtype of the trained model's parameters and compute: bf16 when ``bf16``
    (``train.bf16``) and ``device`` is CUDA, else fp32 (CPU runs are fp32)."""
    return torch.bfloat16 if bf16 and torch.device(device).type == "cuda" else torch.float32


class MasterParam(NamedTuple):
    """The fp32 master copy of one model parameter this rank holds: ``main`` is the whole
    parameter (``start is None``) or its flat elements ``[start, end)`` (a distributed
    optimizer's shard; ``group`` is the data-parallel group the shards are spread over).
    ``main`` None: a frozen parameter (a LoRA base), which never changes: nothing to fold."""

    main: torch.Tensor | None
    start: int | None = None
    end: int | None = None
    group: object = None


def master_params(model: nn.Module, optimizer=None) -> list[MasterParam]:
    """The weights the optimizer actually updates, per parameter of ``model`` (in
    ``model.parameters()`` order), in fp32.

    * Megatron's mixed-precision optimizer (``fp32_from_float16_groups``): the full fp32
      main copy of each bf16/fp16 parameter;
    * Megatron's distributed optimizer (``shard_fp32_from_float16_groups``): this rank's
      fp32 main shard and its flat range (a parameter with no shard here has an empty one);
    * frozen parameters (``requires_grad`` False, e.g. a LoRA base): ``main`` None (no
      copy: an EMA of it keeps the value it started from, which is the parameter's);
    * fp32 parameters, no optimizer, or an optimizer without main params: the parameter
      (``p.float()`` is ``p`` itself: an fp32 EMA of it is unchanged by this module)."""
    found: dict[int, MasterParam] = {}
    inner = [o for o in getattr(optimizer, "chained_optimizers", None) or [optimizer] if o]
    distributed = [o for o in inner if hasattr(o, "shard_fp32_from_float16_groups")]
    for opt in inner:
        if opt in distributed:
            group = opt.data_parallel_group
            pairs = zip(opt.model_float16_groups, opt.shard_fp32_from_float16_groups, strict=True)
            for model_group, main_group in pairs:
                for p, main in zip(model_group, main_group, strict=True):
                    if main is None:
                        raise ValueError(
                            "the optimizer keeps no fp32 main params (precision-aware "
                            "optimizer): the EMA cannot average the master weights"
                        )
                    r = opt._get_model_param_range_map(p)["param"]
                    found[id(p)] = MasterParam(main.detach(), r.start, r.end, group)
        elif hasattr(opt, "fp32_from_float16_groups"):  # Float16OptimizerWithFloat16Params
            pairs = zip(opt.float16_groups, opt.fp32_from_float16_groups, strict=True)
            for model_group, main_group in pairs:
                for p, main in zip(model_group, main_group, strict=True):
                    found[id(p)] = MasterParam(main.detach())
    out = []
    for p in model.parameters():
        if not p.requires_grad:  # frozen (a LoRA base): no optimizer copy, never changes
            out.append(MasterParam(None))
        elif id(p) in found:
            out.append(found[id(p)])
        elif p.dtype in (torch.float16, torch.bfloat16) and distributed:
            # the distributed optimizer gave this rank no shard of it: nothing to update here
            empty = p.detach().new_empty(0, dtype=torch.float32)
            out.append(MasterParam(empty, 0, 0, distributed[0].data_parallel_group))
        else:
            out.append(MasterParam(p.detach().float()))
    return out


#: per EMA parameter index: (start, end, group) of the shard this rank updated since the sync
PendingShards = dict[int, tuple[int, int, object]]


@torch.no_grad()
def lerp_to_masters_(
    ema_params: Sequence[torch.Tensor],
    masters: Sequence[MasterParam],
    weight: float,
    pending: PendingShards,
) -> None:
    """``ema <- ema + weight (master - ema)`` (``= d ema + (1 - d) master`` with
    ``weight = 1 - d``) for each fp32 EMA parameter, on the elements this rank's master
    holds; a sharded one is recorded in ``pending`` for :func:`sync_sharded_`."""
    for i, (p_ema, src) in enumerate(zip(ema_params, masters, strict=True)):
        if src.main is None:  # frozen: its EMA stays what it started as (the parameter)
            continue
        if src.start is None:
            p_ema.lerp_(src.main.view_as(p_ema), weight)
        else:
            p_ema.view(-1)[src.start : src.end].lerp_(src.main.view(-1), weight)
            pending[i] = (src.start, src.end, src.group)


@torch.no_grad()
def sync_sharded_(ema_params: Sequence[torch.Tensor], pending: PendingShards) -> None:
    """Make an EMA whole on every rank after sharded updates: each element of a sharded
    parameter is updated by exactly one data-parallel rank, so zeroing the others and
    sum-reducing over the group gives the full EMA everywhere (``x + 0`` is exact: the
    result is bit-identical to an unsharded update). Clears ``pending``. A collective over
    the data-parallel group when ``pending`` is not empty: every rank calls it."""
    if not pending:
        return
    import torch.distributed as dist

    for i, (start, end, group) in sorted(pending.items()):
        if group is None or not dist.is_initialized() or dist.get_world_size(group) == 1:
            continue
        flat = ema_params[i].view(-1)
        mine = flat[start:end].clone()
        flat.zero_()
        flat[start:end] = mine
        dist.all_reduce(flat, group=group)
    pending.clear()
