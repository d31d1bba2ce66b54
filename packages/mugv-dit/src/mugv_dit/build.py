"""The one way to construct a :class:`~mugv_dit.model.MUGDiT`: its Megatron
``TransformerConfig`` (kept as ``model.config``) derived from the ModelConfig and the
parallel layout the instance sits in."""

from __future__ import annotations

import torch

from mugv_dit.config import ModelConfig, RuntimeConfig
from mugv_dit.model import MUGDiT, ParallelContext, megatron_config


def build_model(
    cfg: ModelConfig,
    *,
    dtype: torch.dtype = torch.float32,
    layout: ParallelContext | None = None,
    runtime: RuntimeConfig | None = None,
    sequence_parallel: bool = False,
    cpu_init: bool = True,
) -> MUGDiT:
    """A MUGDiT of architecture ``cfg`` with parameters in ``dtype``, placed at ``layout``
    (default: one process; in a run: ``mugv_dit.parallel.parallel_context()``) and run with
    ``runtime`` settings (default ``RuntimeConfig()``).

    Parameters are drawn from the global torch RNG (seed it first for a reproducible model);
    with ``cpu_init`` (the default) the tensor-parallel weights are drawn whole on the CPU
    and then split, so every TP size gives the same model. ``sequence_parallel`` takes
    effect only with TP > 1. Megatron's layers need its process groups
    (``mugv_dit.parallel.init_distributed``) and, without CUDA, ``megatron_patches.cpu_megatron()``.
    """
    layout = layout or ParallelContext.single()
    tcfg = megatron_config(
        cfg,
        tensor_parallel=layout.tp_size,
        pipeline_parallel=layout.pp_size,
        context_parallel=layout.cp_size,
        params_dtype=dtype,
        cpu_init=cpu_init,
        sequence_parallel=sequence_parallel,
    )
    return MUGDiT(cfg, tcfg, runtime=runtime, parallel=layout).to(dtype)
