"""A graphed denoising step: the DiT's block stack replayed as one CUDA graph.

The per-step DiT call (cond + uncond in one batch of 2) has the same shapes at every step of a
generation, so the 56 blocks' kernels are captured once (after a warm-up call, which also
finishes ``torch.compile`` and kernel JITs) and replayed: one launch instead of thousands.
Only the block stack is captured: the embeddings, the final layer and the step cache's
decision (a host-side comparison) run around it as before, so the step cache keeps working
(a skipped step replays nothing; a computed one replays the graph).

The graph reads its inputs from static buffers: each call copies its tensors into them, so
the same graph serves every step (and every generation of the same shapes). A new shape, a
new text layout or a new non-tensor argument captures a new graph (at most ``max_graphs``
kept); weights that moved (CPU offload between generations) drop every graph, and the next
call captures again. Where capture fails (a kernel that cannot be captured), a warning names the reason and
the stack runs eagerly from then on.
"""

from __future__ import annotations

import dataclasses
import itertools
import warnings
from collections import OrderedDict
from collections.abc import Callable

import torch


def _key(value):
    """What a captured graph depends on beyond tensor contents."""
    if isinstance(value, torch.Tensor):
        return ("T", tuple(value.shape), value.dtype, str(value.device), value.stride())
    if dataclasses.is_dataclass(value):
        fields = dataclasses.fields(value)
        return (type(value).__name__, *(_key(getattr(value, f.name)) for f in fields))
    if isinstance(value, list | tuple):
        return tuple(_key(v) for v in value)
    return ("V", value)


def _static(value):
    """A static copy of every tensor inside ``value`` (the graph's input buffers)."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(
            value, **{f.name: _static(getattr(value, f.name)) for f in dataclasses.fields(value)}
        )
    if isinstance(value, tuple):
        return tuple(_static(v) for v in value)
    return value


def _copy_into(static, value) -> None:
    if isinstance(static, torch.Tensor):
        static.copy_(value)
    elif dataclasses.is_dataclass(static):
        for f in dataclasses.fields(static):
            _copy_into(getattr(static, f.name), getattr(value, f.name))
    elif isinstance(static, tuple):
        for s, v in zip(static, value):
            _copy_into(s, v)


class CudaGraphRecorder:
    """Capture ``fn(*args)`` into a ``torch.cuda.CUDAGraph`` -> (replay, static output)."""

    def __call__(self, fn: Callable, static_args: tuple):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up on a side stream, as torch documents
            fn(*static_args)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn(*static_args)
        return graph.replay, out


class EagerRecorder:
    """A stand-in for :class:`CudaGraphRecorder` off-GPU (tests): "replay" runs ``fn`` on the
    static buffers and writes the static output in place, as a graph would. A graph's input
    copying is therefore exercised exactly: an input not copied gives a stale result."""

    def __init__(self):
        self.captures = 0

    def __call__(self, fn: Callable, static_args: tuple):
        self.captures += 1
        out = fn(*static_args)

        def replay():
            out.copy_(fn(*static_args))

        return replay, out


class GraphedBlocks:
    """The ``blocks_runner`` of a :class:`MUGDiTTransformer3DModel`: its ``run_blocks``
    replayed from graphs keyed by the arguments' shapes and non-tensor values."""

    def __init__(
        self, run_blocks: Callable, recorder=None, max_graphs: int = 2, weights=lambda: ()
    ):
        self.run_blocks = run_blocks
        self.recorder = recorder or CudaGraphRecorder()
        self.max_graphs = max_graphs
        self.weights = weights
        self.graphs: OrderedDict = OrderedDict()
        self.weights_at: tuple = ()
        self.failed: str | None = None
        self.replays = 0

    def __call__(self, *args):
        if self.failed is not None:
            return self.run_blocks(*args)
        # a graph reads the weights where they were at capture: moved (CPU offload between
        # generations), every graph is dropped and captured again
        where = tuple(t.data_ptr() for t in self.weights())
        if where != self.weights_at:
            self.graphs.clear()
            self.weights_at = where
        key = _key(args)
        entry = self.graphs.get(key)
        if entry is None:
            static_args = _static(args)
            try:
                replay, out = self.recorder(self.run_blocks, static_args)
            except Exception as e:  # a kernel that cannot be captured: stay eager
                self.failed = f"{type(e).__name__}: {e}"[:300]
                warnings.warn(
                    f"graphed step: capture failed ({self.failed}); running eagerly",
                    stacklevel=2,
                )
                return self.run_blocks(*args)
            entry = (static_args, replay, out)
            self.graphs[key] = entry
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        static_args, replay, out = entry
        _copy_into(static_args, args)
        replay()
        self.replays += 1
        return out.clone()  # the static output is overwritten by the next replay


def apply_graphed_blocks(transformer, recorder=None) -> GraphedBlocks:
    """Replay the block stack of ``transformer`` from CUDA graphs (see the module
    docstring); returns the runner (``transformer.blocks_runner``)."""
    blocks = transformer.blocks
    runner = GraphedBlocks(
        transformer.run_blocks,
        recorder,
        weights=lambda: itertools.chain(blocks.parameters(), blocks.buffers()),
    )
    transformer.blocks_runner = runner
    return runner


def remove_graphed_blocks(transformer) -> None:
    transformer.blocks_runner = None
