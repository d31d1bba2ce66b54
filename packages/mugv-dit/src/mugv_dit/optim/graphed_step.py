"""A training step (forward, backward, grad reduction, optionally the optimizer) replayed as a
CUDA graph, one graph per input shape.

At a fixed bucket shape a step launches the same kernels every time; eager PyTorch spends host
time on each launch (and Megatron's hooks add Python per parameter), so at 12.9k tokens the GPU
idles for part of every step. :class:`GraphedStep` runs a step callable eagerly a few times on
the capture stream (warm-up: kernel compilation, autotuning, lazily created optimizer state,
the autograd threads' cuBLAS handles), captures one call into a :class:`torch.cuda.CUDAGraph`,
and from then on replays it. It follows PyTorch's whole-network capture recipe and
Megatron-Core's full-iteration graph (``megatron/core/full_cuda_graph.py``):

* **one capture stream per process** (:func:`capture_stream`): warm-up and capture run on it,
  and Megatron's ``DistributedDataParallel`` must be built under :func:`on_capture_stream`.
  DDP keeps every parameter's ``AccumulateGrad`` node (its grad hooks hang on it), and autograd
  runs a node on the stream that was current when the node was created. Built on the default
  stream, the backward's last op per parameter then runs on the legacy stream, and capture
  fails with ``cudaErrorStreamCaptureImplicit`` ("operation would make the legacy stream
  depend on a capturing blocking stream") -- the first GPU run of this class, 2026-12-07.
  Megatron-LM builds its DDP on its shared capture stream for the same reason. Where torch
  has ``torch.autograd.graph.set_override_stale_capture_stream`` it is switched on during
  capture as well (autograd then moves such nodes onto the capturing stream);
* ``capture_error_mode="thread_local"`` (data-loader threads may allocate meanwhile);
* **static inputs**: :meth:`GraphedStep.__call__` copies each step's tensors into buffers
  owned by the graph of that shape (key: shapes, dtypes and a caller's ``key``); a new shape
  warms up and captures its own graph; all graphs share one memory pool (steps run one at a
  time and their outputs stay referenced), at most ``max_graphs`` are kept (least recently
  used dropped; a shape seen before is captured again without a warm-up);
* the callable makes **no host synchronisation** (``.item()``, ``.cpu()``, data-dependent
  shapes, pageable host-to-device copies) and launches nothing on the legacy stream; an
  optimizer inside it must be :class:`~mugv_dit.optim.sync_free_step.SyncFreeStep` over
  torch's fused AdamW with :func:`capturable_adam` (step counts and the learning rate on the
  device; :meth:`GraphedStep.set_lr` fills the latter before each replay).

**Failure is not fatal.** If the capture raises, the step falls back to eager execution for
good (``fallback=True``): one warning names the phase the callable had reached
(:func:`step_phase` marks them: ``forward``, ``backward``, ``grad reduce``, ``optimizer``),
the failing operation (innermost frame of the root exception) and the CUDA error with a hint;
:attr:`GraphedStep.failure` keeps it for logs and benchmarks. A capture records the step
without running it, so the failed call then runs the step eagerly: every call is one step.

The replayed step launches exactly the captured kernels on the same memory, so its numerics
are the eager step's (bit for bit on a deterministic kernel set); what changes is host time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import traceback
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence

import torch

from mugv_dit.optim.fused_adam import _torch_adams

log = logging.getLogger(__name__)

_CAPTURE_STREAMS: dict[int, torch.cuda.Stream] = {}
CAPTURE_END = "capture end"
_PHASE = ["eager"]  # the phase the step callable last announced (step_phase)


def capture_stream(device: torch.device | int | None = None) -> torch.cuda.Stream:
    """The one non-default stream this process warms up and captures graphed steps on (per
    device), as Megatron-LM's ``get_shared_capture_stream``."""
    index = torch.cuda.current_device() if device is None else torch.device("cuda", device).index
    if index is None:
        index = torch.cuda.current_device()
    if index not in _CAPTURE_STREAMS:
        _CAPTURE_STREAMS[index] = torch.cuda.Stream(device=index)
    return _CAPTURE_STREAMS[index]


@contextlib.contextmanager
def on_capture_stream(enabled: bool = True) -> Iterator[None]:
    """Run the body on :func:`capture_stream` (ordered after, and before, the current
    stream's work). Build Megatron's ``DistributedDataParallel`` under it when its steps are
    to be graphed (module docstring). A no-op without CUDA or with ``enabled=False``."""
    if not enabled or not torch.cuda.is_available():
        yield
        return
    side, current = capture_stream(), torch.cuda.current_stream()
    side.wait_stream(current)
    with torch.cuda.stream(side):
        yield
    current.wait_stream(side)


def step_phase(name: str) -> None:
    """Announce the phase a (graphed) step callable has reached; a failed capture names it."""
    _PHASE[0] = name


def capturable_adam(optimizer) -> list[torch.Tensor]:
    """Make every torch Adam/AdamW inside ``optimizer`` safe to capture: ``capturable=True``
    (step counts on the device) and a 0-dim float32 device tensor as each group's ``lr``.
    Returns the lr tensors (fill them to change the learning rate of a replayed step)."""
    lrs = []
    for adam in _torch_adams(optimizer):
        for group in adam.param_groups:
            if not group.get("fused"):
                raise ValueError("capturing the optimizer step needs torch's fused AdamW")
            device = group["params"][0].device
            lr = group["lr"]
            if not isinstance(lr, torch.Tensor):
                lr = torch.tensor(float(lr), dtype=torch.float32, device=device)
            group["lr"], group["capturable"] = lr, True
            lrs.append(lr)
        for state in adam.state.values():
            step = state.get("step")
            if isinstance(step, torch.Tensor) and step.device.type == "cpu":
                state["step"] = step.to(device=next(iter(adam.param_groups))["params"][0].device)
    return lrs


# -- failure diagnostics ------------------------------------------------------------------
_HINTS = (
    (
        ("legacy stream", "StreamCaptureImplicit"),
        "work on the default (legacy) stream during capture: build Megatron DDP under "
        "on_capture_stream() (its AccumulateGrad nodes keep the stream current at their "
        "creation) and launch no kernel on stream 0 / torch.cuda.default_stream()",
    ),
    (
        ("not permitted when stream is capturing", "StreamCaptureUnsupported"),
        "a host synchronisation during capture (.item(), .cpu(), torch.cuda.synchronize(), a "
        "data-dependent shape, a pageable host-to-device copy)",
    ),
    (
        ("StreamCaptureUnjoined", "unjoined"),
        "a stream forked from the capture stream was not joined back before the capture ended",
    ),
    (
        ("StreamCaptureIsolation", "StreamCaptureWrongThread"),
        "work from another thread or a stream outside the capture joined it",
    ),
)


@dataclasses.dataclass(frozen=True)
class CaptureFailure:
    """Why a graphed step runs eagerly: the ``phase`` (``warm-up``, ``capture`` with the
    callable's last :func:`step_phase`, or ``capture end``), the failing operation (file:line
    and source of the innermost frame of the root error), the error and a hint."""

    phase: str
    op: str
    error: str
    hint: str

    def message(self) -> str:
        return (
            f"graphed step: capture failed in phase {self.phase!r} at {self.op}: {self.error}"
            f" -- {self.hint}; running this step eagerly from now on"
        )


def _root(exc: BaseException) -> BaseException:
    """The first error of a chain (``torch.cuda.graph``'s exit re-raises a later one)."""
    seen = {id(exc)}
    while True:
        nxt = exc.__cause__
        if nxt is None and not exc.__suppress_context__:
            nxt = exc.__context__
        if nxt is None or id(nxt) in seen:
            return exc
        seen.add(id(nxt))
        exc = nxt


def describe_failure(exc: BaseException, phase: str) -> CaptureFailure:
    root = _root(exc)
    frames = traceback.extract_tb(root.__traceback__)
    op = "?"
    if frames:
        f = frames[-1]
        op = f"{f.filename}:{f.lineno} ({(f.line or '').strip()})"
    text = f"{type(root).__name__}: {str(root).splitlines()[0] if str(root) else ''}"
    if root is not exc:
        text += f" (then {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    hint = "see the error"
    for needles, h in _HINTS:
        if any(n.lower() in str(root).lower() or n.lower() in str(exc).lower() for n in needles):
            hint = h
            break
    return CaptureFailure(phase, op, text, hint)


# -- the graph backend (CUDA; tests substitute a fake) ----------------------------------
class CudaGraphs:
    """What :class:`GraphedStep` needs from CUDA graphs: a stream, a shared pool, capture,
    replay. Tests pass an object with the same methods to run the logic on the CPU."""

    def __init__(self) -> None:
        self._pool = None

    def stream(self) -> contextlib.AbstractContextManager:
        return on_capture_stream()

    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def capture(self, fn: Callable[[], object]) -> tuple[object, object]:
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        override = getattr(torch.autograd.graph, "set_override_stale_capture_stream", None)
        graph = torch.cuda.CUDAGraph()
        if override is not None:
            override(True)
        try:
            with torch.cuda.graph(
                graph, pool=self._pool, stream=capture_stream(), capture_error_mode="thread_local"
            ):
                out = fn()
                step_phase(CAPTURE_END)  # the body returned: what fails now is the capture's end
        finally:
            if override is not None:
                override(False)
        return graph, out

    def replay(self, graph) -> None:
        graph.replay()


class RecordedCalls:
    """The CPU stand-in for :class:`CudaGraphs` (``--device cpu`` smoke runs, tests): a
    "capture" records the callable without running it, a "replay" calls it again on the same
    static inputs. Same call sequence and buffer handling as on CUDA, no speed-up."""

    def stream(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def synchronize(self) -> None:
        pass

    def capture(self, fn: Callable[[], object]) -> tuple[object, object]:
        return fn, None

    def replay(self, graph) -> object:
        return graph()


@dataclasses.dataclass
class _Entry:
    static: list[torch.Tensor]
    graph: object = None
    output: object = None
    keepalive: object = None  # device memory the graph reads that the step does not own


def _signature(inputs: Sequence[torch.Tensor], key: Hashable) -> tuple:
    return (key, *((tuple(t.shape), t.dtype, str(t.device)) for t in inputs))


class GraphedStep:
    """Replay ``step_fn(*inputs)`` as a CUDA graph per input signature after ``warmup`` eager
    calls (module docstring). ``reset`` (optional) runs before the eager re-run of a step
    whose capture failed (e.g. drop ``param.grad`` left by the aborted backward).
    ``keepalive`` (optional), called after each capture: what it returns is kept as long as
    that graph, for device memory the graph reads that a cache outside it might free (a
    replay reads the captured addresses, not the cache)."""

    def __init__(
        self,
        step_fn: Callable[..., object],
        *,
        warmup: int = 3,
        max_graphs: int = 4,
        fallback: bool = True,
        reset: Callable[[], None] | None = None,
        keepalive: Callable[[], object] | None = None,
        backend=None,
    ) -> None:
        if warmup < 1:
            raise ValueError("warmup must be >= 1 (the first eager call builds lazy state)")
        if max_graphs < 1:
            raise ValueError("max_graphs must be >= 1")
        self.step_fn = step_fn
        self.warmup = warmup
        self.max_graphs = max_graphs
        self.fallback = fallback
        self.reset = reset
        self.keepalive = keepalive
        if backend is None:
            backend = CudaGraphs() if torch.cuda.is_available() else RecordedCalls()
        self.backend = backend
        self.failure: CaptureFailure | None = None
        self.captures = 0  # graphs captured so far (re-captures included)
        self.replays = 0
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self._warm: dict[tuple, int] = {}  # eager calls per signature (kept after eviction)
        self._lrs: list[torch.Tensor] = []

    # -- learning rate of a captured optimizer ------------------------------------------
    def bind_lr(self, lr_tensors: list[torch.Tensor]) -> None:
        self._lrs = list(lr_tensors)

    def set_lr(self, lr: float) -> None:
        for t in self._lrs:
            t.fill_(lr)

    @property
    def graphs(self) -> int:
        return sum(e.graph is not None for e in self._entries.values())

    @staticmethod
    def copy_inputs(pairs) -> None:
        """``static.copy_(new)`` for each ``(static, new)`` pair (same shape and dtype)."""
        for static, new in pairs:
            if static.shape != new.shape:
                raise ValueError(
                    f"a graphed step's input changed shape {tuple(static.shape)} -> "
                    f"{tuple(new.shape)}: one graph serves one bucket"
                )
            static.copy_(new, non_blocking=True)

    def _entry(self, sig: tuple, inputs: Sequence[torch.Tensor]) -> _Entry:
        entry = self._entries.get(sig)
        if entry is None:
            entry = _Entry([t.detach().clone() for t in inputs])
            self._entries[sig] = entry
            while len(self._entries) > self.max_graphs:
                # drops its graph (the pool keeps the memory); coming back, the signature
                # runs one eager step before its capture (caches its step fills, e.g. the
                # model's RoPE tables, may have moved on)
                old, _ = self._entries.popitem(last=False)
                self._warm[old] = min(self._warm.get(old, 0), self.warmup - 1)
        else:
            self.copy_inputs(zip(entry.static, inputs))
        self._entries.move_to_end(sig)
        return entry

    def __call__(self, *inputs: torch.Tensor, key: Hashable = None) -> object:
        """One step on ``inputs``: eager (on the capture stream) for the first ``warmup``
        calls of a signature, then capture + replay, then replay. The output is the step
        callable's (for a replayed step: the captured output tensors, refilled)."""
        if self.failure is not None:
            return self.step_fn(*inputs)
        sig = _signature(inputs, key)
        entry = self._entry(sig, inputs)
        if entry.graph is None and self._warm.get(sig, 0) < self.warmup:
            self._warm[sig] = self._warm.get(sig, 0) + 1
            step_phase("warm-up")
            with self.backend.stream():
                return self.step_fn(*entry.static)
        if entry.graph is None:
            self._capture(entry)
            if self.failure is not None:
                if self.reset is not None:
                    self.reset()
                return self.step_fn(*inputs)
        out = self.backend.replay(entry.graph)
        self.replays += 1
        return entry.output if entry.output is not None else out

    def _capture(self, entry: _Entry) -> None:
        self.backend.synchronize()
        step_phase("start of the step")
        try:
            graph, output = self.backend.capture(lambda: self.step_fn(*entry.static))
        except Exception as exc:  # reported, then eager (or re-raised)
            phase = _PHASE[0]
            phase = phase if phase == CAPTURE_END else f"capture ({phase})"
            self.failure = describe_failure(exc, phase)
            step_phase("eager")
            log.warning(self.failure.message())
            if not self.fallback:
                raise
            warnings.warn(self.failure.message(), RuntimeWarning, stacklevel=3)
            self._entries.clear()
            with contextlib.suppress(Exception):
                self.backend.synchronize()
            return
        step_phase("eager")
        entry.graph, entry.output = graph, output
        if self.keepalive is not None:
            entry.keepalive = self.keepalive()
        self.captures += 1
