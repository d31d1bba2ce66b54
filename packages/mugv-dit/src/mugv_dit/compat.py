"""The one place where mugv-dit works around Megatron-Core's hard-coded CUDA.

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
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from unittest import mock

import torch
from torch.overrides import TorchFunctionMode

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


def default_backend() -> str:
    """torch.distributed backend for this machine: nccl with CUDA, gloo without."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def default_device() -> torch.device:
    """The current CUDA device, or the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextlib.contextmanager
def adam_state_for_loading(optimizer) -> Iterator[None]:
    """Give a fresh Megatron Adam optimizer temporary zero state while a loading template is
    built.

    Megatron-Core's DistributedOptimizer builds its loading sharded state dict from existing
    optimizer state (it reads one global 'step' from it), while its ``load_state_dict`` expects
    a fresh optimizer to have NO state yet (it allocates the state itself). So the temporary
    state (exp_avg, exp_avg_sq, step) lives only inside this context.
    """
    inner = getattr(optimizer, "optimizer", None)
    added = []
    if inner is not None:
        for group in inner.param_groups:
            for p in group["params"]:
                if not inner.state[p]:
                    inner.state[p] = {
                        "exp_avg": torch.zeros_like(p.data),
                        "exp_avg_sq": torch.zeros_like(p.data),
                        "step": torch.zeros((), dtype=torch.float32),
                    }
                    added.append(p)
    try:
        yield
    finally:
        for p in added:
            inner.state.pop(p, None)


@contextlib.contextmanager
def torch_adam_step_on_load(optimizer) -> Iterator[None]:
    """Let Megatron's DistributedOptimizer load 'fully_reshardable' state into torch Adam.

    Without Apex/TE, Megatron-Core 0.16 puts torch Adam's per-parameter 'step' into the state
    it copies loaded tensors into, but the loaded tensors carry no 'step' (it is restored
    globally), so ``_set_main_param_and_optimizer_states`` raises KeyError('step'). Inside
    this context the loaded tensors borrow the step already restored in the state.
    Megatron also hands every parameter the SAME step tensor, which torch Adam increments in
    place once per parameter; on exit each parameter gets its own copy.
    """
    subs = getattr(optimizer, "chained_optimizers", [optimizer])
    patched = []
    for sub in subs:
        orig = getattr(sub, "_set_main_param_and_optimizer_states", None)
        if orig is None:
            continue

        def fixed(model_param, tensors, _sub=sub, _orig=orig):
            if "step" not in tensors:
                group, order = _sub.model_param_group_index_map[model_param]
                main = _sub.optimizer.param_groups[group]["params"][order]
                state = _sub.optimizer.state.get(main, {})
                if "step" in state:
                    tensors = {**tensors, "step": state["step"]}
            return _orig(model_param, tensors)

        sub._set_main_param_and_optimizer_states = fixed
        patched.append(sub)
    try:
        yield
    finally:
        for sub in patched:
            del sub._set_main_param_and_optimizer_states
    for sub in subs:
        inner = getattr(sub, "optimizer", None)
        for state in getattr(inner, "state", {}).values():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].clone()
