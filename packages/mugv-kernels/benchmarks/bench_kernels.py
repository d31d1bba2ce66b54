"""Benchmark of the fused kernels against PyTorch eager and torch.compile of the same math.

For each kernel and shape, in one run on one device:

* forward and forward+backward time of three implementations: ``triton`` (this package),
  ``eager`` (the PyTorch reference, :mod:`mugv_kernels.reference`) and ``compile``
  (``torch.compile`` of that reference, default mode, static shapes);
* device time from CUDA-graph replays (several input sets rotate so the working set exceeds
  L2; launch overhead excluded) and host-launched time (``triton.testing.do_bench``, which
  flushes L2 and includes Python/launch overhead);
* achieved bandwidth = the fewest bytes the op must move (each activation-sized input read
  once, each output written once; per-sample vectors ignored) / device time, against a
  device-to-device copy measured in the same run (bytes read + written).

Writes ``kernels.json`` (config, device, every number) and ``kernels.md`` (table) atomically.

Usage: ``python bench_kernels.py --out DIR [--quick] [--deadline-s 420]``
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mugv_kernels as mk
import torch
from mugv_kernels import reference as ref
from mugv_kernels._launch import TUNING


@dataclass
class BenchConfig:
    """Resolved benchmark configuration (written into the JSON)."""

    out: str
    dtype: str = "bfloat16"
    dit_tokens: tuple[int, ...] = (12_880, 50_400)  # 360p / 720p 105-frame clips, patch 1x2x2
    dit_hidden: tuple[int, ...] = (1728, 3456)
    head_dim: int = 72
    vae_shapes: tuple[tuple[int, ...], ...] = (
        (17, 128, 256, 256),  # 2D trunk, 17 frames at 256p, full resolution
        (9, 512, 90, 160),  # 2D trunk mid-block, 9 frames at 720p (H/8)
        (1, 256, 9, 90, 160),  # temporal VAE, 720p grid, 9 latent-rate frames
    )
    channels_last_shape: tuple[int, ...] = (9, 512, 90, 160)  # also timed channels-last
    vae_groups: int = 32
    impls: tuple[str, ...] = ("triton", "eager", "compile")
    graph_calls: int = 4  # captured calls per graph replay
    replays: int = 20
    deadline_s: float = 420.0  # skip torch.compile for rows started after this
    quick: bool = False
    tuning: dict = field(default_factory=lambda: json.loads(json.dumps(TUNING)))


# ---------------------------------------------------------------- problems


@dataclass
class Problem:
    """One kernel at one shape: builds input sets and runs each implementation."""

    kernel: str
    shape: str
    make_inputs: Callable[[torch.Generator], dict]  # activation inputs + constants
    run: Callable[..., object]  # run(impl_fn_kind, **inputs) -> output(s)
    grad_names: tuple[str, ...]
    fwd_bytes: int
    bwd_bytes: int  # extra bytes of the backward pass


def _act(shape, dtype, device, gen, offset=0.0):
    """Random activation drawn on the device (``gen`` lives there too)."""
    return (torch.randn(shape, generator=gen, device=device) + offset).to(dtype)


def dit_problems(cfg: BenchConfig, device, dtype) -> list[Problem]:
    probs = []
    esize = torch.finfo(dtype).bits // 8
    for tokens in cfg.dit_tokens:
        for hidden in cfg.dit_hidden:
            act = tokens * hidden * esize
            shape = f"L={tokens} D={hidden}"

            def mk_modln(gen, tokens=tokens, hidden=hidden):
                return {
                    "x": _act((1, tokens, hidden), dtype, device, gen, 0.5),
                    "shift": _act((1, hidden), dtype, device, gen),
                    "scale": _act((1, hidden), dtype, device, gen),
                }

            probs.append(Problem("modulated_layer_norm", shape, mk_modln, _run_modln,
                                 ("x", "shift", "scale"), 2 * act, 3 * act))  # fmt: skip

            def mk_gated(gen, tokens=tokens, hidden=hidden, branch=False):
                inputs = {
                    "x": _act((1, tokens, hidden), dtype, device, gen, 0.5),
                    "y": _act((1, tokens, hidden), dtype, device, gen),
                    "bias": _act((hidden,), dtype, device, gen),
                }
                mshape = (1, 2, hidden) if branch else (1, hidden)
                for name in ("gate", "shift", "scale"):
                    inputs[name] = _act(mshape, dtype, device, gen)
                if branch:
                    mask = torch.rand(1, tokens, generator=gen, device=device) < 0.1
                    inputs["token_branch"] = mask
                return inputs

            if tokens == max(cfg.dit_tokens) and hidden == max(cfg.dit_hidden):

                def mk_modln_token(gen, tokens=tokens, hidden=hidden):
                    return {
                        name: _act((1, tokens, hidden), dtype, device, gen, 0.5 * (name == "x"))
                        for name in ("x", "shift", "scale")
                    }

                # per-token modulation: shift/scale are read (and their grads written) too
                probs.append(Problem("modulated_layer_norm", shape + " per-token", mk_modln_token,
                                     _run_modln, ("x", "shift", "scale"), 4 * act, 6 * act))  # fmt: skip
            names = ("x", "y", "gate", "shift", "scale", "bias")
            probs.append(Problem("gated_residual_modulated_norm", shape, mk_gated, _run_gated,
                                 names, 4 * act, 6 * act))  # fmt: skip
            if tokens == max(cfg.dit_tokens) and hidden == max(cfg.dit_hidden):

                def mk_gated_branch(gen, tokens=tokens, hidden=hidden):
                    return mk_gated(gen, tokens, hidden, branch=True)

                probs.append(Problem("gated_residual_modulated_norm", shape + " branch",
                                     mk_gated_branch, _run_gated, names, 4 * act, 6 * act))  # fmt: skip
            heads = hidden // cfg.head_dim

            def mk_qk(gen, tokens=tokens, heads=heads):
                hd = cfg.head_dim
                cos, sin = mk.rope3d_frequencies((1, 1, tokens), hd, device=device)
                return {
                    "q": _act((1, tokens, heads, hd), dtype, device, gen),
                    "k": _act((1, tokens, heads, hd), dtype, device, gen),
                    "q_weight": _act((hd,), dtype, device, gen, 1.0),
                    "k_weight": _act((hd,), dtype, device, gen, 1.0),
                    "cos": cos,
                    "sin": sin,
                }

            probs.append(Problem("qk_rmsnorm_rope3d", f"L={tokens} H={heads}x{cfg.head_dim}",
                                 mk_qk, _run_qk, ("q", "k", "q_weight", "k_weight"),
                                 2 * 2 * act, 3 * 2 * act))  # fmt: skip
    return probs


def vae_problems(cfg: BenchConfig, device, dtype) -> list[Problem]:
    probs = []
    esize = torch.finfo(dtype).bits // 8
    for shape in cfg.vae_shapes:
        act = esize
        for s in shape:
            act *= s

        def mk_gn(gen, shape=shape, channels_last=False):
            c = shape[1]
            x = _act(shape, dtype, device, gen, 1.0)
            if channels_last:  # NHWC / NDHWC memory, as in a channels-last VAE
                fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
                x = x.contiguous(memory_format=fmt)
            return {
                "x": x,
                "weight": _act((c,), dtype, device, gen, 1.0),
                "bias": _act((c,), dtype, device, gen),
            }

        name = "x".join(map(str, shape))
        probs.append(Problem("group_norm_silu", name, mk_gn, _run_gn,
                             ("x", "weight", "bias"), 2 * act, 3 * act))  # fmt: skip
        if shape == cfg.channels_last_shape:

            def mk_gn_cl(gen, shape=shape):
                return mk_gn(gen, shape, channels_last=True)

            probs.append(Problem("group_norm_silu", name + " channels-last", mk_gn_cl, _run_gn,
                                 ("x", "weight", "bias"), 2 * act, 3 * act))  # fmt: skip
    return probs


def _run_modln(fn, x, shift, scale):
    return fn(x, shift, scale)


def _run_gated(fn, x, y, gate, shift, scale, bias, token_branch=None):
    return fn(x, y, gate, shift, scale, bias, token_branch)


def _run_qk(fn, q, k, q_weight, k_weight, cos, sin):
    return fn(q, k, q_weight, k_weight, cos, sin)


def _run_gn(fn, x, weight, bias):
    return fn(x, weight, bias)


def implementations(kernel: str, groups: int) -> dict[str, Callable]:
    """The three implementations of one kernel (triton, eager reference, compiled reference)."""
    if kernel == "modulated_layer_norm":
        tri = lambda x, s, c: mk.modulated_layer_norm(x, s, c, use_triton=True)  # noqa: E731
        eager = lambda x, s, c: ref.modulated_layer_norm_ref(x, s, c)  # noqa: E731
    elif kernel == "gated_residual_modulated_norm":

        def tri(x, y, g, s, c, b, tb):
            return mk.gated_residual_modulated_norm(
                x, y, g, s, c, bias=b, token_branch=tb, use_triton=True
            )

        def eager(x, y, g, s, c, b, tb):
            return ref.gated_residual_modulated_norm_ref(x, y, g, s, c, bias=b, token_branch=tb)

    elif kernel == "qk_rmsnorm_rope3d":
        tri = lambda *a: mk.qk_rmsnorm_rope3d(*a, use_triton=True)  # noqa: E731
        eager = ref.qk_rmsnorm_rope3d_ref
    else:
        tri = lambda x, w, b: mk.group_norm_silu(x, groups, w, b, use_triton=True)  # noqa: E731
        eager = lambda x, w, b: ref.group_norm_silu_ref(x, groups, w, b)  # noqa: E731
    return {"triton": tri, "eager": eager, "compile": torch.compile(eager, dynamic=False)}


# ---------------------------------------------------------------- timing


def _step(prob: Problem, fn: Callable, inputs: dict, backward: bool):
    args = {k: v for k, v in inputs.items() if not k.startswith("_")}
    if not backward:
        with torch.no_grad():
            return prob.run(fn, **args)
    outs = prob.run(fn, **args)
    outs = outs if isinstance(outs, tuple) else (outs,)
    leaves = [inputs[n] for n in prob.grad_names]
    return torch.autograd.grad(outs, leaves, [inputs["_grad"][i] for i in range(len(outs))])


def graph_time_ms(call: Callable[[int], object], n_sets: int, calls: int, replays: int) -> float:
    """Median device time of one call, from CUDA-graph replays of ``calls`` captured calls."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(3):
            call(i % n_sets)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            call(i % n_sets)
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    del graph
    return statistics.median(times)


def host_time_ms(call: Callable[[int], object], n_sets: int) -> float:
    import triton.testing

    counter = iter(range(1 << 30))
    return triton.testing.do_bench(
        lambda: call(next(counter) % n_sets), warmup=25, rep=100, return_mode="median"
    )


def copy_ceiling(device, replays: int) -> dict:
    """Device-memory ceiling: the fastest of several 1 GiB bf16 device-to-device copies (bytes
    read + written), each the median of ``replays`` event-timed runs.

    Variants: ``copy_`` (a plain ``cudaMemcpyAsync``; inside a CUDA graph it becomes a memcpy
    node served by the copy engines, which on an H200 reaches only ~2.8 TB/s) and an SM copy
    kernel (``torch.mul(src, 1, out=dst)``), each timed directly and from graph replays. The
    fused kernels run on the SMs, so the SM copy is the ceiling that bounds them.
    """
    n = 1 << 29  # 1 GiB of bf16 per buffer, far beyond the 50-60 MB L2
    src = torch.randn(n, device=device, dtype=torch.float32).to(torch.bfloat16)
    dst = torch.empty_like(src)
    nbytes = 2 * src.numel() * src.element_size()
    variants = {
        "memcpy": lambda i: dst.copy_(src),
        "sm_kernel": lambda i: torch.mul(src, 1, out=dst),
    }
    for call in variants.values():
        for _ in range(100):  # clocks up before timing
            call(0)
    results = {}
    for name, call in variants.items():
        results[f"{name}_graph"] = graph_time_ms(call, 1, 4, replays)
        times = []
        for _ in range(replays):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(4):
                call(0)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 4)
        results[f"{name}_events"] = statistics.median(times)
    best = min(results, key=results.get)
    ms = results[best]
    return {
        "bytes": nbytes,
        "ms": ms,
        "GBps": nbytes / ms / 1e6,
        "best": best,
        "GBps_by_variant": {k: nbytes / v / 1e6 for k, v in results.items()},
    }


# ---------------------------------------------------------------- driver

#: launch-parameter variants tried by ``--sweep`` (kernel key, parameter overrides)
SWEEP = [
    ("qk", {"programs_per_sm": 64}),
    ("qk", {"tile_elems": 8192}),
    ("qk_bwd", {"split": 1}),
    ("qk_bwd", {"dw_reduce": 1}),
    ("qk_bwd", {"tile_elems": 1024}),
    ("qk_bwd", {"programs_per_sm": 8}),
    ("qk_bwd", {"programs_per_sm": 32}),
    ("qk_bwd", {"warp_elems": 128}),
    ("modln_fwd", {"tile_elems": 4096}),
    ("modln_bwd", {"programs_per_sm": 16}),
    ("gated_fwd", {"tile_elems": 16384}),
    ("gated_fwd", {"tile_elems": 8192}),
    ("gated_bwd", {"programs_per_sm": 16}),
    # last: the cooperative kernels spin on a grid barrier (rows so far are saved first)
    ("gn_coop", {"enabled": 1}),
    ("gn_coop", {"enabled": 1, "num_warps": 4}),
    ("gn_coop", {"enabled": 1, "num_warps": 4, "item_elems": 16384}),
]
_SWEEP_KERNEL = {
    "modln": "modulated_layer_norm",
    "gated": "gated_residual_modulated_norm",
    "qk": "qk_rmsnorm_rope3d",
    "gn": "group_norm_silu",
}


def sweep(
    problems: list[Problem],
    cfg: BenchConfig,
    device,
    deadline: float,
    on_rows: Callable[[list[dict]], None] = lambda rows: None,
) -> list[dict]:
    """Time the Triton kernels under each launch-parameter variant (one change at a time);
    ``on_rows`` gets the rows so far after each variant (to save them)."""
    rows = []
    for key, params in SWEEP:
        kernel = _SWEEP_KERNEL[key.split("_")[0]]
        probs = [p for p in problems if p.kernel == kernel and "branch" not in p.shape]
        if time.perf_counter() > deadline:
            break
        old = dict(TUNING[key])
        TUNING[key].update(params)
        variant = f"{key}." + ",".join(f"{k}={v}" for k, v in params.items())
        try:
            for prob in [probs[0]] + ([probs[-1]] if len(probs) > 1 else []):
                for row in bench_problem(prob, cfg, device, False, ("triton",), False):
                    rows.append({**row, "variant": variant})
        finally:
            TUNING[key].clear()
            TUNING[key].update(old)
        on_rows(rows)
    return rows


def bench_problem(
    prob: Problem,
    cfg: BenchConfig,
    device,
    allow_compile: bool,
    impl_names: tuple[str, ...] | None = None,
    host_timing: bool = True,
) -> list[dict]:
    gen = torch.Generator(device=device).manual_seed(0)
    act_bytes = prob.fwd_bytes
    n_sets = 3 if act_bytes < (200 << 20) else 2
    sets = []
    for _ in range(n_sets):
        inputs = prob.make_inputs(gen)
        for name in prob.grad_names:
            inputs[name] = inputs[name].requires_grad_(True)
        sets.append(inputs)
    groups = cfg.vae_groups
    impls = implementations(prob.kernel, groups)
    rows = []
    # gradient seeds: shapes of the outputs
    torch._dynamo.reset()
    with torch.no_grad():
        probe = _step(prob, impls["eager"], sets[0], backward=False)
    probe = probe if isinstance(probe, tuple) else (probe,)
    for inputs in sets:
        inputs["_grad"] = [torch.randn_like(o) for o in probe]
    del probe
    for impl in impl_names or cfg.impls:
        if impl == "compile" and not allow_compile:
            rows.append({"kernel": prob.kernel, "shape": prob.shape, "impl": impl,
                         "skipped": "deadline"})  # fmt: skip
            continue
        fn = impls[impl]
        row = {"kernel": prob.kernel, "shape": prob.shape, "impl": impl}
        t0 = time.perf_counter()
        for mode, backward in (("fwd", False), ("fwd_bwd", True)):
            call = lambda i, b=backward, f=fn: _step(prob, f, sets[i], b)  # noqa: E731
            nbytes = prob.fwd_bytes + (prob.bwd_bytes if backward else 0)
            row[f"{mode}_bytes"] = nbytes
            try:
                if host_timing:
                    row[f"{mode}_host_ms"] = host_time_ms(call, n_sets)
                ms = graph_time_ms(call, n_sets, cfg.graph_calls, cfg.replays)
                row[f"{mode}_ms"] = ms
                row[f"{mode}_GBps"] = nbytes / ms / 1e6
            except Exception as err:  # report, keep going
                row[f"{mode}_error"] = f"{type(err).__name__}: {str(err)[:300]}"
                torch.cuda.synchronize()
        row["wall_s"] = time.perf_counter() - t0
        rows.append(row)
        print(json.dumps(row), flush=True)
    torch.cuda.empty_cache()
    return rows


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def table(rows: list[dict], ceiling: float) -> str:
    by_key: dict = {}
    for r in rows:
        by_key.setdefault((r["kernel"], r["shape"]), {})[r["impl"]] = r
    lines = [
        "| kernel | shape | mode | triton ms | GB/s | % copy | eager ms | compile ms "
        "| x eager | x compile | triton host ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (kernel, shape), impls in by_key.items():
        for mode in ("fwd", "fwd_bwd"):
            t = impls.get("triton", {})
            e = impls.get("eager", {})
            c = impls.get("compile", {})
            tm, em, cm = t.get(f"{mode}_ms"), e.get(f"{mode}_ms"), c.get(f"{mode}_ms")
            fmt = lambda v: f"{v:.3f}" if v else "-"  # noqa: E731
            ratio = lambda a, b: f"{a / b:.2f}" if a and b else "-"  # noqa: E731
            gbps = t.get(f"{mode}_GBps")
            lines.append(
                f"| {kernel} | {shape} | {mode} | {fmt(tm)} | {gbps or 0:.0f} | "
                f"{100 * (gbps or 0) / ceiling:.0f}% | {fmt(em)} | {fmt(cm)} | {ratio(em, tm)} "
                f"| {ratio(cm, tm)} | {fmt(t.get(f'{mode}_host_ms'))} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true", help="one DiT shape and two VAE shapes")
    parser.add_argument("--deadline-s", type=float, default=420.0)
    parser.add_argument("--impls", nargs="+", default=["triton", "eager", "compile"])
    parser.add_argument("--sweep-until-s", type=float, default=0.0,
                        help="after the table, sweep launch parameters until this many s")  # fmt: skip
    args = parser.parse_args(argv)
    cfg = BenchConfig(out=args.out, deadline_s=args.deadline_s, quick=args.quick,
                      impls=tuple(args.impls))  # fmt: skip
    if args.quick:
        cfg.dit_tokens, cfg.dit_hidden, cfg.vae_shapes = (12_880,), (1728,), cfg.vae_shapes[:2]
    if not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    dtype = getattr(torch, cfg.dtype)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    ceiling = copy_ceiling(device, cfg.replays)
    print(
        f"copy ceiling: {ceiling['GBps']:.0f} GB/s ({ceiling['best']}); by variant: "
        + ", ".join(f"{k} {v:.0f}" for k, v in ceiling["GBps_by_variant"].items()),
        flush=True,
    )
    meta = {
        "device": torch.cuda.get_device_name(device),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "triton": __import__("triton").__version__,
        "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
        "config": dataclasses.asdict(cfg),
        "copy_ceiling": ceiling,
    }
    rows: list[dict] = []
    problems = dit_problems(cfg, device, dtype) + vae_problems(cfg, device, dtype)
    for prob in problems:
        allow_compile = time.perf_counter() - start < cfg.deadline_s
        try:
            rows.extend(bench_problem(prob, cfg, device, allow_compile))
        except Exception as err:  # keep the other rows
            rows.append({"kernel": prob.kernel, "shape": prob.shape, "impl": "triton",
                         "error": f"{type(err).__name__}: {str(err)[:300]}"})  # fmt: skip
            print(f"{prob.kernel} {prob.shape}: {rows[-1]['error']}", flush=True)
        payload = {**meta, "rows": rows, "elapsed_s": time.perf_counter() - start}
        _atomic_write(out / "kernels.json", json.dumps(payload, indent=1))
    end_ceiling = copy_ceiling(device, cfg.replays)  # again, warm; the higher one counts
    if end_ceiling["GBps"] > ceiling["GBps"]:
        ceiling = end_ceiling
    meta["copy_ceiling"] = ceiling
    meta["copy_ceiling_end"] = end_ceiling
    _atomic_write(out / "kernels.json", json.dumps({**meta, "rows": rows}, indent=1))
    md = table(rows, ceiling["GBps"])
    _atomic_write(out / "kernels.md", md + "\n")
    print(md)
    if args.sweep_until_s > 0:

        def save(sweep_rows: list[dict]) -> None:
            payload = {**meta, "rows": rows, "sweep": sweep_rows}
            _atomic_write(out / "kernels.json", json.dumps(payload, indent=1))

        sweep_rows = sweep(problems, cfg, device, start + args.sweep_until_s, save)
        payload = {**meta, "rows": rows, "sweep": sweep_rows,
                   "elapsed_s": time.perf_counter() - start}  # fmt: skip
        _atomic_write(out / "kernels.json", json.dumps(payload, indent=1))
        for r in sweep_rows:
            print(f"{r['variant']:44s} {r['shape']:22s} fwd {r.get('fwd_ms', 0):.4f} "
                  f"fwd_bwd {r.get('fwd_bwd_ms', 0):.4f}")  # fmt: skip
    print(f"elapsed {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
