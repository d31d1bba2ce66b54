"""The low-memory recipe (``runtime.low_memory``, ``--low-memory``): the 10b at 720p x 105
frames within 24 GB of GPU memory.

One switch sets, over whatever else the settings say:

* ``quantization: fp8`` — the DiT's block linears as float8 e4m3 weights (about 11.5 GB for
  the 10b instead of 23 GB in bf16), quantized layer by layer straight onto the GPU;
* ``cpu_offload: true`` — T5, the DiT and the VAE live on the CPU and go to the GPU in turn
  (the 4.7B-parameter T5 never shares the GPU with the DiT);
* ``vae_tile`` at most 16 latents — the VAE decodes in overlapping spatial tiles;
* ``graphed_step: false`` — a CUDA graph keeps its own memory pool;
* ``compile: true`` on a GPU — compiled, each block's activation quantization fuses into the kernels
  around it (eager, :class:`mugv_infer.quantize.Fp8Linear` quantizes in row chunks instead).

Set ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`` before the run as well: it keeps the
allocator from fragmenting between the stages.
"""

from __future__ import annotations

import torch

LOW_MEMORY_VAE_TILE = 16


def low_memory_runtime(runtime, cuda: bool = True):
    """``runtime`` (a RuntimeConfig) with the recipe applied (a copy; unchanged when
    ``runtime.low_memory`` is off). ``cuda``: whether the run is on a GPU (compile only
    there)."""
    if not runtime.low_memory:
        return runtime
    tile = (
        LOW_MEMORY_VAE_TILE
        if runtime.vae_tile is None
        else min(runtime.vae_tile, LOW_MEMORY_VAE_TILE)
    )
    return runtime.model_copy(
        update={
            "quantization": "fp8",
            "cpu_offload": True,
            "vae_tile": tile,
            "graphed_step": False,
            "compile": runtime.compile or cuda,
        }
    )


def cap_gpu_memory(cap_gb: float, device: torch.device | str) -> float | None:
    """Cap this process's allocations on the CUDA ``device`` at ``cap_gb`` GB (1e9 bytes), as
    torch's per-process fraction of the card's total memory; returns that fraction (at most
    1), or None off CUDA (nothing capped). ``"cuda"`` without an index means the current
    device: ``torch.cuda.set_per_process_memory_fraction`` itself refuses an index-less
    device (the 2026-12-07 ``lowmem`` run stopped on exactly that)."""
    if not cap_gb > 0:
        raise ValueError(f"memory cap must be > 0 GB, got {cap_gb}")
    device = torch.device(device)
    if device.type != "cuda":
        return None
    index = torch.cuda.current_device() if device.index is None else device.index
    total = torch.cuda.get_device_properties(index).total_memory
    fraction = min(1.0, cap_gb * 1e9 / total)
    torch.cuda.set_per_process_memory_fraction(fraction, index)
    return fraction
