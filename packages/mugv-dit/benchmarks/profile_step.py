"""Where one training step's GPU time goes: kernel time by category, and idle time.

``profile_step(step, path, label)`` runs ``step()`` once under ``torch.profiler`` (after the
caller's warm-up), then appends one JSON line to ``path``: wall time of the step (host clock around synchronizations),
summed kernel time per category, GPU idle time (wall minus the union of kernel intervals:
launch gaps and host syncs), the torch elementwise time split by kind (copy / layout,
reduction, layer norm, activation, fill, arithmetic) and the 30 kernels that took the longest.
Categories come from kernel names; Triton kernels of mugv_kernels are recognised by their
function names; profiler annotations (``record_function`` ranges) are not kernels.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict

import torch

_CATEGORIES = [
    ("communication", re.compile(r"nccl", re.I)),
    ("attention", re.compile(r"flash|fmha|attention|attn|cudnn.*sdpa|sdpa", re.I)),
    ("gemm", re.compile(r"gemm|nvjet|xmma|cutlass|cublas|wgmma|matmul|splitk", re.I)),
    ("optimizer", re.compile(r"adam|multi_tensor|l2norm|foreach", re.I)),
    ("memcpy/memset", re.compile(r"memcpy|memset", re.I)),
    (
        "torch elementwise/reduce/copy",
        re.compile(r"elementwise|vectorized|reduce|copy|unrolled|fill|index|cat|where|norm", re.I),
    ),
]


#: kinds within "torch elementwise/reduce/copy" (first match wins): where a fusion would go
_ELEMENTWISE_KINDS = [
    ("layer norm", re.compile(r"layer_norm|LayerNorm|GammaBeta", re.I)),
    ("copy / layout", re.compile(r"copy|CatArray|cat_|index|gather|scatter|pad", re.I)),
    ("reduction", re.compile(r"reduce_kernel|Reduce", re.I)),
    ("activation", re.compile(r"gelu|silu|sigmoid|tanh", re.I)),
    ("fill", re.compile(r"Fill|zero", re.I)),
]


def elementwise_kind(name: str) -> str:
    """The kind of a torch elementwise/reduce/copy kernel; ``arithmetic`` for the rest (the
    add / mul / where functors)."""
    for kind, pattern in _ELEMENTWISE_KINDS:
        if pattern.search(name):
            return kind
    return "arithmetic"


def _triton_kernel_names() -> set[str]:
    names: set[str] = set()
    try:
        import importlib
        import pkgutil

        import mugv_kernels
        from triton.runtime.jit import JITFunction
    except ImportError:
        return names
    for info in pkgutil.iter_modules(mugv_kernels.__path__, "mugv_kernels."):
        try:
            module = importlib.import_module(info.name)
        except Exception:
            continue
        for value in vars(module).values():
            fn = getattr(value, "fn", value)
            if isinstance(value, JITFunction) or isinstance(fn, JITFunction):
                names.add(getattr(fn, "__name__", ""))
    return names


def categorize(name: str, triton_names: set[str]) -> str:
    if name in triton_names or name.split("_0d")[0] in triton_names:
        return "mugv_kernels (Triton)"
    if name.startswith("triton_"):
        return "torch.compile (Triton)"
    for category, pattern in _CATEGORIES:
        if pattern.search(name):
            return category
    return "other"


def _union_ms(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for lo, hi in sorted(intervals):
        if hi <= end:
            continue
        total += hi - max(lo, end)
        end = hi
    return total / 1000.0


def gpu_kernel_events(events):
    """The events that are GPU work: device-side events minus user annotations. A
    ``record_function`` range (e.g. ``Optimizer.step#AdamW.step``) also appears on the GPU
    timeline, spanning kernels that are listed on their own; counting it double-counted
    the optimizer (5.2 ms of 12.0 at 1728x8 on an H100, 2026-12-07)."""
    return [
        evt
        for evt in events
        if evt.device_type == torch.autograd.DeviceType.CUDA
        and not getattr(evt, "is_user_annotation", False)
    ]


def profile_step(step, path: str, label: str = "") -> dict:
    from torch.profiler import ProfilerActivity, profile

    triton_names = _triton_kernel_names()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - t0) * 1000.0
    by_category: dict[str, float] = defaultdict(float)
    by_kind: dict[str, list] = defaultdict(lambda: [0.0, 0])
    by_kernel: dict[str, list] = defaultdict(lambda: [0.0, 0])
    intervals = []
    for evt in gpu_kernel_events(prof.events()):
        start, end = evt.time_range.start, evt.time_range.end
        ms = (end - start) / 1000.0
        intervals.append((start, end))
        category = categorize(evt.name, triton_names)
        by_category[category] += ms
        if category == "torch elementwise/reduce/copy":
            by_kind[elementwise_kind(evt.name)][0] += ms
            by_kind[elementwise_kind(evt.name)][1] += 1
        by_kernel[evt.name][0] += ms
        by_kernel[evt.name][1] += 1
    busy_ms = _union_ms(intervals)
    span_ms = (max(e for _, e in intervals) - min(s for s, _ in intervals)) / 1000.0
    result = {
        "label": label,
        "wall_ms": wall_ms,
        "kernel_ms": sum(by_category.values()),
        "busy_ms": busy_ms,
        "idle_in_span_ms": span_ms - busy_ms,
        "idle_ms": wall_ms - busy_ms,
        "by_category_ms": dict(sorted(by_category.items(), key=lambda kv: -kv[1])),
        # the torch elementwise category split by kind: {kind: {"ms", "count"}}
        "elementwise_by_kind": {
            k: {"ms": v[0], "count": v[1]}
            for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1][0])
        },
        "top_kernels": [
            {"name": name[:160], "ms": v[0], "count": v[1]}
            for name, v in sorted(by_kernel.items(), key=lambda kv: -kv[1][0])[:30]
        ],
    }
    with open(path, "a") as f:  # one JSON line per profiled run
        f.write(json.dumps(result) + "\n")
    cats = ", ".join(f"{k} {v:.1f}" for k, v in result["by_category_ms"].items())
    print(
        f"profile {label}: wall {wall_ms:.1f} ms, kernels {result['kernel_ms']:.1f} ms, "
        f"idle {result['idle_ms']:.1f} ms | {cats}",
        flush=True,
    )
    return result
