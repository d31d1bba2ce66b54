"""Benchmark of the experimental head-dim-72 Triton attention against PyTorch SDPA backends.

Model FLOPs: forward ``4 * B * H * L^2 * Dh``, forward+backward 3.5x that (non-causal), with the
true head dim (72), so padding waste shows up as lower TFLOP/s. Each SDPA backend (cuDNN,
flash, memory-efficient) and a few Triton block configurations are timed in the same run with
``triton.testing.do_bench`` (median). Writes ``attention.json`` and ``attention.md``.

Usage: ``python bench_attention.py --out DIR``
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

import torch
import triton.testing
from mugv_kernels.attention import ATTN_TUNING, attention
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = [(1, 12_880, 24, 72), (1, 50_400, 48, 72)]
BACKENDS = {
    "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
    "sdpa_flash": SDPBackend.FLASH_ATTENTION,
    "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
}
TRITON_CONFIGS = {
    "triton_a": {},
    "triton_b": {"fwd_n": 128, "fwd_stages": 2, "dkdv_m": 32, "dkdv_stages": 3},
    "triton_c": {"fwd_warps": 4, "fwd_m": 64, "dq_m": 64, "dq_warps": 4, "dkdv_n": 64},
}


def _time(fn) -> float:
    return triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")


def bench_shape(b, seq_len, heads, head_dim) -> list[dict]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    qkv = [
        torch.randn(
            b, seq_len, heads, head_dim, device="cuda", generator=gen, dtype=torch.bfloat16
        ).requires_grad_()
        for _ in range(3)
    ]
    dout = torch.randn_like(qkv[0])
    flops = 4 * b * heads * seq_len * seq_len * head_dim
    rows = []
    impls = {name: ("sdpa", backend) for name, backend in BACKENDS.items()}
    impls.update({name: ("triton", cfg) for name, cfg in TRITON_CONFIGS.items()})
    for name, (kind, arg) in impls.items():
        row = {"impl": name, "shape": f"B={b} L={seq_len} H={heads} Dh={head_dim}"}
        old = dict(ATTN_TUNING)
        try:
            if kind == "sdpa":
                ctx = sdpa_kernel([arg])
                run = lambda: attention(*qkv)  # noqa: E731
            else:
                ctx = sdpa_kernel(list(BACKENDS.values()))
                ATTN_TUNING.update(arg)
                run = lambda: attention(*qkv, use_triton=True)  # noqa: E731
            with ctx:
                with torch.no_grad():
                    fwd = _time(run)
                fwd_bwd = _time(lambda r=run: torch.autograd.grad(r(), qkv, dout))
            row.update(
                fwd_ms=fwd,
                fwd_tflops=flops / fwd / 1e9,
                fwd_bwd_ms=fwd_bwd,
                fwd_bwd_tflops=3.5 * flops / fwd_bwd / 1e9,
            )
        except Exception as err:  # a backend may refuse head dim 72: report it
            row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
        finally:
            ATTN_TUNING.clear()
            ATTN_TUNING.update(old)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "device": torch.cuda.get_device_name(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
        "triton_configs": TRITON_CONFIGS,
        "base_tuning": ATTN_TUNING,
    }
    rows = []
    for shape in SHAPES:
        rows += bench_shape(*shape)
        (out / "attention.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    lines = [
        "| shape | impl | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['impl']} | error: {r['error'][:60]} | | | |")
            continue
        lines.append(
            f"| {r['shape']} | {r['impl']} | {r['fwd_ms']:.2f} | {r['fwd_tflops']:.0f} | "
            f"{r['fwd_bwd_ms']:.2f} | {r['fwd_bwd_tflops']:.0f} |"
        )
    (out / "attention.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
