"""Modulated LayerNorm fused into the QKV / fc1 GEMM prologue vs the unfused path (issue 29).

For each case ``tokens x K -> N`` (per-branch modulation, bf16, bias), in one run on one device:

* ``fused``: :func:`mugv_kernels.ln_linear.modulated_ln_linear` (stats pass + Triton GEMM with
  the norm applied on load; backward: cuBLAS dgrad, modulated-LN backward, Triton dW);
* ``recompute``: ``method="recompute"``: modulated LN kernel + cuBLAS, the normalised
  activation dropped and recomputed in the backward (saves what ``fused`` saves);
* ``unfused``: the Triton modulated LayerNorm (normalised activation written in bf16) then
  cuBLAS ``F.linear`` (what the model's fast path runs today);
* ``gemm``: ``F.linear`` alone on an already-normalised input (cuBLAS; the GEMM floor).

Forward and forward+backward times (median of ``triton.testing.do_bench``), the max abs
difference fused vs unfused, and the modelled bytes each path moves *outside* the GEMM's own
operands (``x``/``xn`` reads and writes, statistics), with the time those bytes take at the
copy ceiling (an SM copy kernel measured in the same run). Writes ``ln_qkv.json`` and
``ln_qkv.md`` under ``--out``.

Usage: ``python ln_qkv.py --out DIR`` (GPU) or ``python ln_qkv.py --tiny --device cpu --out DIR``
(CPU, Triton interpreter, tiny sizes: checks the script runs; times are meaningless).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

if "--device" in sys.argv and sys.argv[sys.argv.index("--device") + 1] == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first triton import

import torch
import torch.nn.functional as F
from mugv_kernels._atomic import atomic_write_text
from mugv_kernels.ln_linear import (
    _mod_tables,
    fused_dw,
    fused_gemm,
    ln_stats,
    modulated_ln_linear,
)
from mugv_kernels.modulated_norm import modulated_layer_norm

#: (name, samples, tokens per sample, K, N): 12.9k tokens = two 360p 105-frame clips' worth
CASES = [
    ("qkv-1728", 2, 6450, 1728, 3 * 1728),
    ("qkv-3456", 2, 6450, 3456, 3 * 3456),
    ("fc1-1728", 2, 6450, 1728, 4 * 1728),
]
TINY_CASES = [("qkv-tiny", 2, 40, 48, 144)]


def make_inputs(samples, tokens, k, n, device, dtype, gen):
    def rnd(*shape, s=1.0, o=0.0):
        return (torch.randn(*shape, generator=gen) * s + o).to(device, dtype)

    return {
        "x": rnd(samples, tokens, k, s=2.0, o=0.5),
        "shift": rnd(samples, 2, k, s=0.3),
        "scale": rnd(samples, 2, k, s=0.3),
        "weight": rnd(n, k, s=k**-0.5),
        "bias": rnd(n, s=0.1),
        "token_branch": (torch.rand(samples, tokens, generator=gen) < 0.2).to(device),
        "dy": rnd(samples, tokens, n),
    }


def fused(inp, x, w, b, shift, scale):
    return modulated_ln_linear(
        x, shift, scale, w, b, token_branch=inp["token_branch"], use_triton=True
    )


def recompute(inp, x, w, b, shift, scale):
    return modulated_ln_linear(
        x, shift, scale, w, b, token_branch=inp["token_branch"], method="recompute",
        use_triton=True,
    )  # fmt: skip


def unfused(inp, x, w, b, shift, scale):
    xn = modulated_layer_norm(x, shift, scale, token_branch=inp["token_branch"], use_triton=True)
    return F.linear(xn, w, b)


def gemm(inp, x, w, b, shift, scale):
    return F.linear(inp["xn"], w, b)


IMPLS = {"fused": fused, "recompute": recompute, "unfused": unfused, "gemm": gemm}


def extra_bytes(impl: str, rows: int, k: int, elem: int = 2) -> dict[str, int]:
    """Modelled bytes outside the GEMM's own operands (x or xn read once, W, y), fwd / bwd.

    unfused fwd: modLN reads x, writes xn + stats; the GEMM's A operand is xn (counted as the
    GEMM's). fused fwd: stats pass reads x, writes stats; the GEMM reads stats + row index.
    bwd (both): dgrad writes dxn, modLN-bwd reads dxn + x + stats and writes dx; the dW GEMM
    reads xn (unfused, saved) or x + stats (fused). ``saved`` = activation bytes kept for the
    backward beyond x (unfused: xn).
    """
    act = rows * k * elem
    stats = rows * 8
    if impl == "unfused":
        return {"fwd": 2 * act + stats, "bwd": 3 * act + stats, "saved": act}
    if impl == "fused":
        return {"fwd": act + 2 * stats + rows * 4, "bwd": 3 * act + 2 * stats, "saved": 0}
    if impl == "recompute":  # the unfused forward; the backward re-runs modLN (read x, write xn)
        return {"fwd": 2 * act + stats, "bwd": 5 * act + 2 * stats, "saved": 0}
    return {"fwd": 0, "bwd": 0, "saved": 0}


def time_ms(fn, device) -> float:
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def copy_ceiling_GBps(device) -> float:
    """Bytes read + written per second of an SM copy kernel over 1 GiB (256 KiB on CPU)."""
    n = (1 << 29) if device.type == "cuda" else (1 << 17)
    src = torch.ones(n, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: torch.mul(src, 1, out=dst), device)
    return 2 * src.numel() * 2 / ms / 1e6


def parts(inp: dict, m: int, k: int, n: int, device) -> dict:
    """The fused path's pieces against their cuBLAS counterparts on the stored activation:
    statistics pass; forward GEMM (norm on load) vs ``F.linear(xn)``; dW (norm on load) vs
    ``dy^T @ xn``."""
    x, w, b = inp["x"], inp["weight"], inp["bias"]
    x_MK = x.reshape(m, k)
    xn = inp["xn"].detach().reshape(m, k)
    dy = inp["dy"].reshape(m, n)
    _, mean, rstd = ln_stats(x_MK, 1e-6)
    shift_t, scale_t, idx = _mod_tables(inp["shift"], inp["scale"], inp["token_branch"], x,
                                        "branch")  # fmt: skip
    with torch.no_grad():
        return {
            "part_stats_ms": time_ms(lambda: ln_stats(x_MK, 1e-6), device),
            "part_gemm_fused_ms": time_ms(
                lambda: fused_gemm(x_MK, w, b, mean, rstd, idx, shift_t, scale_t), device
            ),
            "part_gemm_cublas_ms": time_ms(lambda: F.linear(xn, w, b), device),
            "part_dw_fused_ms": time_ms(
                lambda: fused_dw(x_MK, dy, mean, rstd, idx, shift_t, scale_t, w.dtype), device
            ),
            "part_dw_cublas_ms": time_ms(lambda: dy.t() @ xn, device),
        }


def bench_case(case, device, dtype, gen) -> dict:
    name, samples, tokens, k, n = case
    inp = make_inputs(samples, tokens, k, n, device, dtype, gen)
    inp["xn"] = modulated_layer_norm(
        inp["x"], inp["shift"], inp["scale"], token_branch=inp["token_branch"], use_triton=True
    )
    leaves = {key: inp[key].detach().clone().requires_grad_() for key in ("x", "weight", "bias")}
    leaves["shift"] = inp["shift"].detach().clone().requires_grad_()
    leaves["scale"] = inp["scale"].detach().clone().requires_grad_()
    inp["xn"].requires_grad_()
    row = {"case": name, "tokens": samples * tokens, "K": k, "N": n}
    outs = {}
    for impl, fn in IMPLS.items():
        args = (inp, leaves["x"], leaves["weight"], leaves["bias"], leaves["shift"],
                leaves["scale"])  # fmt: skip

        def fwd(fn=fn, args=args):
            with torch.no_grad():
                return fn(*args)

        wrt = [inp["xn"] if impl == "gemm" else leaves["x"], leaves["weight"], leaves["bias"]]
        if impl != "gemm":
            wrt += [leaves["shift"], leaves["scale"]]

        def fwd_bwd(fn=fn, args=args, wrt=wrt):
            torch.autograd.grad(fn(*args), wrt, inp["dy"])

        outs[impl] = fwd()
        row[f"{impl}_fwd_ms"] = time_ms(fwd, device)
        row[f"{impl}_fwdbwd_ms"] = time_ms(fwd_bwd, device)
        row[f"{impl}_extra_bytes"] = extra_bytes(impl, samples * tokens, k)
    row.update(parts(inp, samples * tokens, k, n, device))
    diff = (outs["fused"].float() - outs["unfused"].float()).abs()
    row["max_abs_diff_fused_unfused"] = float(diff.max())
    row["rel_diff_fused_unfused"] = float(
        diff.norm() / outs["unfused"].float().norm().clamp_min(1e-30)
    )
    row["gemm_tflops_fwd"] = 2 * samples * tokens * k * n / row["gemm_fwd_ms"] / 1e9
    return row


def table(rows: list[dict], ceiling: float) -> str:
    lines = [
        f"copy ceiling (SM copy kernel, read + write): {ceiling:.0f} GB/s",
        "",
        "| case | impl | fwd ms | fwd+bwd ms | fwd - gemm ms | extra MB fwd | at ceiling ms "
        "| saved MB | max abs diff vs unfused |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for impl in IMPLS:
            eb = r[f"{impl}_extra_bytes"]
            over = r[f"{impl}_fwd_ms"] - r["gemm_fwd_ms"]
            diff = f"{r['max_abs_diff_fused_unfused']:.3g}" if impl == "fused" else ""
            lines.append(
                f"| {r['case']} ({r['tokens']}x{r['K']}->{r['N']}) | {impl} "
                f"| {r[f'{impl}_fwd_ms']:.3f} | {r[f'{impl}_fwdbwd_ms']:.3f} | {over:+.3f} "
                f"| {eb['fwd'] / 1e6:.1f} | {eb['fwd'] / ceiling / 1e6:.3f} "
                f"| {eb['saved'] / 1e6:.1f} | {diff} |"
            )
    lines += [
        "",
        "Pieces (ms): statistics pass; forward GEMM with the norm on load vs cuBLAS on the "
        "stored activation; dW with the norm on load vs cuBLAS `dy^T @ xn`.",
        "",
        "| case | stats | fwd GEMM fused | fwd GEMM cuBLAS | dW fused | dW cuBLAS |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['part_stats_ms']:.3f} | {r['part_gemm_fused_ms']:.3f} "
            f"| {r['part_gemm_cublas_ms']:.3f} | {r['part_dw_fused_ms']:.3f} "
            f"| {r['part_dw_cublas_ms']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (the CPU check)")
    parser.add_argument("--cases", nargs="+", help="subset of case names")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device; use --tiny --device cpu")
    cases = TINY_CASES if args.tiny else CASES
    if args.cases:
        cases = [c for c in cases if c[0] in args.cases]
    gen = torch.Generator().manual_seed(0)
    ceiling = copy_ceiling_GBps(device)
    rows = []
    for case in cases:
        rows.append(bench_case(case, device, torch.bfloat16, gen))
        print(json.dumps(rows[-1]), flush=True)
    import triton

    meta = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (Triton interpreter)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "copy_ceiling_GBps": ceiling,
    }
    out = Path(args.out)
    atomic_write_text(out / "ln_qkv.json", json.dumps({**meta, "rows": rows}, indent=1))
    md = f"# ln_qkv: {meta['device']}, {meta['date']}\n\n`{meta['command']}`\n\n"
    md += table(rows, ceiling)
    atomic_write_text(out / "ln_qkv.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
