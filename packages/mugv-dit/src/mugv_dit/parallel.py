"""Process-group set-up: torch.distributed + Megatron-Core parallel_state, and the model's
:class:`ParallelContext` read from it once (:func:`parallel_context`).

Works for one process (world size 1, no launcher) and under torchrun (env:// rendezvous).
"""

from __future__ import annotations

import datetime
import os
import socket

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from mugv_dit.model.parallel_context import ParallelContext


def default_backend() -> str:
    """torch.distributed backend for this machine: nccl with CUDA, gloo without."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def default_device() -> torch.device:
    """The current CUDA device, or the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(
    tensor_parallel: int = 1,
    backend: str = "auto",
    *,
    pipeline_parallel: int = 1,
    context_parallel: int = 1,
) -> None:
    """Initialise torch.distributed (if needed) and Megatron's TP/CP/PP/DP groups."""
    if backend == "auto":
        backend = default_backend()
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            os.environ.update(
                {
                    "RANK": "0",
                    "WORLD_SIZE": "1",
                    "LOCAL_RANK": "0",
                    "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": str(_free_port()),
                }
            )
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=10))
    world = dist.get_world_size()
    model_ranks = tensor_parallel * pipeline_parallel * context_parallel
    if min(tensor_parallel, pipeline_parallel, context_parallel) < 1 or world % model_ranks:
        raise ValueError(
            f"world size {world} not divisible by tensor_parallel={tensor_parallel} x "
            f"pipeline_parallel={pipeline_parallel} x context_parallel={context_parallel}"
        )
    if parallel_state.model_parallel_is_initialized():
        have = (
            parallel_state.get_tensor_model_parallel_world_size(),
            parallel_state.get_pipeline_model_parallel_world_size(),
            parallel_state.get_context_parallel_world_size(),
        )
        if have != (tensor_parallel, pipeline_parallel, context_parallel):
            raise ValueError(f"parallel_state already initialised with (TP, PP, CP)={have}")
        return
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tensor_parallel,
        pipeline_model_parallel_size=pipeline_parallel,
        context_parallel_size=context_parallel,
    )


def destroy_distributed() -> None:
    """Tear down Megatron's groups and the default process group."""
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def parallel_context() -> ParallelContext:
    """This process's place in Megatron's parallel_state, for the model (one process, no
    model parallelism, when parallel_state is not initialised)."""
    if not parallel_state.model_parallel_is_initialized():
        return ParallelContext.single()
    cp_size = parallel_state.get_context_parallel_world_size()
    return ParallelContext(
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        tp_size=parallel_state.get_tensor_model_parallel_world_size(),
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        pp_size=parallel_state.get_pipeline_model_parallel_world_size(),
        cp_rank=parallel_state.get_context_parallel_rank(),
        cp_size=cp_size,
        cp_group=parallel_state.get_context_parallel_group() if cp_size > 1 else None,
    )
