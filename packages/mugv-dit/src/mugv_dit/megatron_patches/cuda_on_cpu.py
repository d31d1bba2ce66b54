"""Patch: Megatron-Core's hard-coded CUDA lands on the CPU (:func:`cpu_megatron`).

Megatron-Core 0.16 allocates buffers with ``device='cuda'`` / ``torch.cuda.current_device()``,
opens CUDA streams and checks ``param.type() == 'torch.cuda.FloatTensor'`` in its
distributed data parallel wrapper, optimizers and grad clipping; its pipeline schedules and
p2p communication allocate receive buffers on ``torch.cuda.current_device()`` and call
``torch.cuda.synchronize()`` after ``batch_isend_irecv``. On a machine without CUDA
(tests, the CPU demo) :func:`cpu_megatron` makes those calls land on the CPU:

* factory functions and ``Tensor.to`` / ``Tensor.cuda`` asked for a CUDA device get the CPU,
* ``Tensor.type()`` of a CPU float tensor answers the CUDA type name Megatron checks for,
* ``torch.cuda.current_device`` answers ``"cpu"``; streams, ``synchronize`` and
  ``empty_cache`` are no-ops.

It is a no-op when CUDA is available, so GPU runs use Megatron unchanged.

Patched (inside the context only): ``torch.cuda.current_device``, ``torch.cuda.synchronize``,
``torch.cuda.empty_cache``, ``torch.cuda.default_stream``, ``torch.cuda.current_stream``,
``torch.cuda.stream`` and a :class:`~torch.overrides.TorchFunctionMode` over every torch call
(``device=`` arguments, ``Tensor.to`` / ``Tensor.cuda`` / ``Tensor.type``). Megatron code that
needs it: :data:`MEGATRON_SYMBOLS`. Test: ``tests/test_cuda_on_cpu.py`` (and every CPU test of a
Megatron DDP / optimizer / pipeline run).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from unittest import mock

import torch
from torch.overrides import TorchFunctionMode

MEGATRON_SYMBOLS = (
    "megatron.core.distributed.param_and_grad_buffer._ParamAndGradBuffer",  # device=cuda
    "megatron.core.distributed.DistributedDataParallel",  # CUDA streams
    "megatron.core.optimizer.clip_grads.get_grad_norm_fp32",  # torch.cuda.current_device()
    "megatron.core.optimizer.distrib_optimizer.DistributedOptimizer",  # param.type() checks
    "megatron.core.pipeline_parallel.p2p_communication",  # recv buffers, synchronize()
)

_CUDA_TYPE_NAMES = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
}


def _cpu_device(device):
    if isinstance(device, str) and device.startswith("cuda"):
        return "cpu"
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    if isinstance(device, int) and not isinstance(device, bool):
        return "cpu"
    return device


class _CudaOnCpuMode(TorchFunctionMode):
    """Redirects CUDA device requests of torch functions to the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return _CUDA_TYPE_NAMES.get(name, name)
        if "device" in kwargs:
            kwargs["device"] = _cpu_device(kwargs["device"])
        if func is torch.Tensor.to:
            args = tuple(_cpu_device(a) if isinstance(a, str | torch.device) else a for a in args)
        return func(*args, **kwargs)


@contextlib.contextmanager
def cpu_megatron(enabled: bool | None = None) -> Iterator[bool]:
    """Context in which Megatron-Core's CUDA-only code paths run on the CPU.

    ``enabled=None`` turns the shim on exactly when CUDA is unavailable. Yields whether it is on.
    """
    if enabled is None:
        enabled = not torch.cuda.is_available()
    if not enabled:
        yield False
        return
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch("torch.cuda.current_device", lambda: "cpu"))
        stack.enter_context(mock.patch("torch.cuda.synchronize", lambda *a, **k: None))
        stack.enter_context(mock.patch("torch.cuda.empty_cache", lambda *a, **k: None))
        stack.enter_context(mock.patch("torch.cuda.default_stream", lambda *a, **k: None))
        stack.enter_context(mock.patch("torch.cuda.current_stream", lambda *a, **k: None))
        stack.enter_context(
            mock.patch("torch.cuda.stream", lambda *a, **k: contextlib.nullcontext())
        )
        stack.enter_context(warnings.catch_warnings())
        # Megatron reads `.grad` of non-leaf views; the mode surfaces torch's warning for it
        warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor that is not")
        stack.enter_context(_CudaOnCpuMode())
        yield True
