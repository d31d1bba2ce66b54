"""Head-dim-72 attention: the Triton kernels against PyTorch SDPA's backends, one GPU run.

Model FLOPs: forward ``4 * B * H * L^2 * Dh``, forward+backward 3.5x that (non-causal), with the
true head dim, so padding waste shows up as lower TFLOP/s; ``bwd`` = fwd+bwd minus fwd. Timed
with ``triton.testing.do_bench`` (median of CUDA-event timings; at 50.4k tokens one call takes
~0.4 s, so a small ``--rep-ms`` times a single call). Rows:

- ``sdpa_cudnn`` / ``sdpa_flash`` / ``sdpa_efficient``: one SDPA backend each, at the head
  dims of ``--head-dims`` and (SDPA only) ``--sdpa-head-dims``: is time flat in the head dim?
- ``sdpa_cudnn_pad80``: zero-pad the head dim to a multiple of 16 (72 -> 80), cuDNN, slice;
- ``triton``: :func:`mugv_kernels.attention.attention` with ``ATTN_TUNING`` (plus the
  ``SWEEP`` variants with ``--sweep``, at ``--sweep-shapes``).

Each Triton row is first checked against a float64 reference (output and gradients of q, k, v)
on a small odd shape; every row reports its relative difference to cuDNN at the timed shape.
``--isolate`` runs the SDPA rows and each Triton row in a child process, so a crashing kernel
(a sticky CUDA error) costs only its own rows. Writes ``attention.json`` and ``attention.md``.

Usage: ``python bench_attention.py --out DIR [--isolate] [--sweep] [--shapes 12.9k 50.4k]
[--head-dims 72 128] [--sdpa-head-dims 80 96] [--rep-ms 120]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.testing
from mugv_kernels.attention import ATTN_TUNING, attention, attention_ref
from torch.nn.attention import SDPBackend, sdpa_kernel

#: (B, L, H) of the DiT's self-attention at 12.9k and 50.4k tokens (hidden 1728 / 3456)
SHAPES = {"12.9k": (1, 12_880, 24), "50.4k": (1, 50_400, 48)}
BACKENDS = {
    "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
    "sdpa_flash": SDPBackend.FLASH_ATTENTION,
    "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
}
#: variants timed by ``--sweep`` (overrides of ATTN_TUNING)
SWEEP: dict[str, dict[str, int]] = {
    "n128_s2": {"fwd_n": 128, "fwd_stages": 2, "dkdv_m": 32, "dkdv_stages": 3},
    "m64_w4": {"fwd_warps": 4, "fwd_m": 64, "dq_m": 64, "dq_warps": 4, "dkdv_n": 64},
}


def _time(fn, rep_ms: int) -> float:
    return triton.testing.do_bench(
        fn, warmup=max(25, rep_ms // 4), rep=rep_ms, return_mode="median"
    )


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.detach().double(), b.detach().double()
    return float((a64 - b64).norm() / b64.norm().clamp_min(1e-300))


def _inputs(b, seq_len, heads, head_dim, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    qkv = [
        torch.randn(b, seq_len, heads, head_dim, device="cuda", generator=gen)
        .bfloat16()
        .requires_grad_()
        for _ in range(3)
    ]
    return qkv, torch.randn(qkv[0].shape, device="cuda", generator=gen).bfloat16()


def _sdpa(backend):
    def run(q, k, v):
        with sdpa_kernel([backend]):
            return attention(q, k, v)

    return run


def _sdpa_pad80(q, k, v):
    """Zero-pad the head dim to a multiple of 16 (72 -> 80; scale of the true head dim), cuDNN,
    slice: is cuDNN padding internally, and would padding ourselves help?"""
    pad = (-q.shape[-1]) % 16
    qp, kp, vp = (F.pad(x, (0, pad)) for x in (q, k, v))
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        out = attention(qp, kp, vp, scale=q.shape[-1] ** -0.5)
    return out[..., : q.shape[-1]]


def _triton(overrides: dict[str, int]):
    def run(q, k, v):
        old = dict(ATTN_TUNING)
        ATTN_TUNING.update(overrides)
        try:
            return attention(q, k, v, use_triton=True)
        finally:
            ATTN_TUNING.clear()
            ATTN_TUNING.update(old)

    return run


def check_small(run, head_dim: int) -> dict:
    """Relative errors of outputs and q/k/v gradients against float64 on an odd shape."""
    (q, k, v), dout = _inputs(2, 1000 + 37, 3, head_dim, seed=7)
    grads = torch.autograd.grad(run(q, k, v), (q, k, v), dout)
    out = run(q, k, v)
    ref_in = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ref = attention_ref(*ref_in, scale=head_dim**-0.5)
    ref_grads = torch.autograd.grad(ref, ref_in, dout.double())
    errs = [_rel(out, ref)] + [_rel(g, r) for g, r in zip(grads, ref_grads)]
    return {"err_out_dq_dk_dv": [round(e, 5) for e in errs], "ok": max(errs) < 2e-2}


def bench(name: str, run, b, seq_len, heads, head_dim, rep_ms: int, ref=None) -> dict:
    row = {"impl": name, "shape": f"B={b} L={seq_len} H={heads} Dh={head_dim}"}
    flops = 4 * b * heads * seq_len * seq_len * head_dim
    (q, k, v), dout = _inputs(b, seq_len, heads, head_dim)
    try:
        t0 = time.time()
        with torch.no_grad():
            out = run(q, k, v)
        grads = torch.autograd.grad(run(q, k, v), (q, k, v), dout)
        torch.cuda.synchronize()
        row["first_call_s"] = round(time.time() - t0, 2)
        if ref is not None:  # agreement with cuDNN at the timed shape
            row["vs_cudnn"] = [round(_rel(a, r), 5) for a, r in zip((out, *grads), ref)]
        del out, grads
        with torch.no_grad():
            fwd = _time(lambda: run(q, k, v), rep_ms)
        fwd_bwd = _time(lambda: torch.autograd.grad(run(q, k, v), (q, k, v), dout), rep_ms)
        row.update(
            fwd_ms=round(fwd, 4),
            fwd_tflops=round(flops / fwd / 1e9, 1),
            fwd_bwd_ms=round(fwd_bwd, 4),
            fwd_bwd_tflops=round(3.5 * flops / fwd_bwd / 1e9, 1),
            bwd_ms=round(fwd_bwd - fwd, 4),
            bwd_tflops=round(2.5 * flops / (fwd_bwd - fwd) / 1e9, 1),
        )
    except Exception as err:  # a backend may refuse a head dim: report it
        row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
    print(json.dumps(row), flush=True)
    return row


def _cudnn_ref(b, seq_len, heads, head_dim):
    (q, k, v), dout = _inputs(b, seq_len, heads, head_dim)
    run = _sdpa(SDPBackend.CUDNN_ATTENTION)
    out = run(q, k, v)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    return [x.detach() for x in (out, *grads)]


def all_impls() -> dict[str, tuple]:
    """name -> (callable, is a sweep variant)."""
    impls = {n: (_sdpa(b), False) for n, b in BACKENDS.items()}
    impls["sdpa_cudnn_pad80"] = (_sdpa_pad80, False)
    impls["triton"] = (_triton({}), False)
    impls.update({f"triton_{n}": (_triton(o), True) for n, o in SWEEP.items()})
    return impls


def _wanted(name: str, is_sweep: bool, shape: str, head_dim: int, checks: dict, args) -> bool:
    """Which rows a run times: Triton rows only after their check passed."""
    if name.startswith("triton") and (head_dim not in args.head_dims or not checks[name]["ok"]):
        return False
    if name.startswith("triton_") and head_dim != 72:
        return False  # tuning variants: head dim 72 only
    if is_sweep and shape not in args.sweep_shapes:
        return False
    if name == "sdpa_cudnn_pad80" and head_dim % 16 == 0:
        return False
    # the memory-efficient backend is 4x slower than cuDNN: timed at the first shape only
    return not (name == "sdpa_efficient" and shape not in args.sweep_shapes)


def measure(names: list[str], args) -> tuple[list[dict], dict]:
    """Check (Triton) and time ``names`` at every requested shape and head dim."""
    impls = {n: v for n, v in all_impls().items() if n in names}
    checks = {}
    for name, (run, _) in impls.items():
        if name.startswith("triton"):
            try:
                checks[name] = check_small(run, 72)
            except Exception as err:
                checks[name] = {"ok": False, "error": f"{type(err).__name__}: {str(err)[:300]}"}
            print(name, json.dumps(checks[name]), flush=True)
    rows = []
    jobs = [(s, d) for s in args.shapes for d in args.head_dims]
    jobs += [(s, d) for s in args.shapes[:1] for d in args.sdpa_head_dims]
    for shape, head_dim in jobs:
        b, seq_len, heads = SHAPES[shape]
        todo = [n for n, (_, sw) in impls.items() if _wanted(n, sw, shape, head_dim, checks, args)]
        if not todo:
            continue
        ref = _cudnn_ref(b, seq_len, heads, head_dim)
        for name in todo:
            run = impls[name][0]
            rows.append(bench(name, run, b, seq_len, heads, head_dim, args.rep_ms, ref))
        del ref
    return rows, checks


def _isolated(names: list[str], argv: list[str], timeout_s: int) -> tuple[list[dict], dict]:
    """Run ``measure`` for ``names`` in a child process: a crashed kernel (a sticky CUDA
    error) then costs only its own rows."""
    with tempfile.TemporaryDirectory() as tmp:
        part = Path(tmp) / "part.json"
        cmd = [sys.executable, __file__, *argv, "--impls", *names, "--child-json", str(part)]
        try:
            proc = subprocess.run(cmd, timeout=timeout_s, capture_output=True, text=True)
            print(proc.stdout[-4000:], proc.stderr[-1500:] if proc.returncode else "", flush=True)
        except subprocess.TimeoutExpired:
            print(f"{names}: timed out after {timeout_s} s", flush=True)
        if part.exists():
            data = json.loads(part.read_text())
            return data["rows"], data["checks"]
    return [], {n: {"ok": False, "error": "child process failed"} for n in names}


def render(rows: list[dict]) -> str:
    lines = [
        "| shape | impl | fwd ms | fwd TFLOP/s | bwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['impl']} | error: {r['error'][:60]} | | | | |")
            continue
        lines.append(
            f"| {r['shape']} | {r['impl']} | {r['fwd_ms']:.2f} | {r['fwd_tflops']:.0f} | "
            f"{r['bwd_tflops']:.0f} | {r['fwd_bwd_ms']:.2f} | {r['fwd_bwd_tflops']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--sweep", action="store_true", help="time the SWEEP variants too")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--sweep-shapes", nargs="+", default=["12.9k"], choices=list(SHAPES))
    parser.add_argument("--head-dims", nargs="+", type=int, default=[72, 128])
    parser.add_argument("--sdpa-head-dims", nargs="*", type=int, default=[], help="SDPA only")
    parser.add_argument("--rep-ms", type=int, default=300)
    parser.add_argument("--tuning", default="{}", help="JSON overrides of ATTN_TUNING")
    parser.add_argument("--isolate", action="store_true", help="one process per Triton impl")
    parser.add_argument("--child-timeout-s", type=int, default=150)
    parser.add_argument("--impls", nargs="+", help="only these (default: all)")
    parser.add_argument("--child-json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    ATTN_TUNING.update(json.loads(args.tuning))
    names = [n for n, (_, sw) in all_impls().items() if args.sweep or not sw]
    names = [n for n in names if not args.impls or n in args.impls]
    if args.child_json:
        rows, checks = measure(names, args)
        Path(args.child_json).write_text(json.dumps({"rows": rows, "checks": checks}))
        return 0
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "device": torch.cuda.get_device_name(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "command": " ".join([os.path.basename(__file__), *argv]),
        "tuning": dict(ATTN_TUNING),
        "sweep": SWEEP if args.sweep else {},
    }
    if args.isolate:
        child_argv = [a for a in argv if a != "--isolate"]
        groups = [[n for n in names if n.startswith("sdpa")]]
        groups += [[n] for n in names if not n.startswith("sdpa")]
        rows, checks = [], {}
        for group in filter(None, groups):
            r, c = _isolated(group, child_argv, args.child_timeout_s)
            rows += r
            checks.update(c)
            (out_dir / "attention.json").write_text(
                json.dumps({**meta, "checks": checks, "rows": rows}, indent=1)
            )
        order = {n: i for i, n in enumerate(names)}
        rows.sort(key=lambda r: (r["shape"], order.get(r["impl"], 0)))
    else:
        rows, checks = measure(names, args)
    (out_dir / "attention.json").write_text(
        json.dumps({**meta, "checks": checks, "rows": rows}, indent=1)
    )
    table = render(rows)
    (out_dir / "attention.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
