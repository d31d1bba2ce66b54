"""Model forward+backward with and without ``runtime.fused_ln_linear`` (issue 29 item 2).

The same MUG-DiT (fused ops on, attention ``auto``, bf16) at 1728 x 8 layers on 12.9k tokens,
built three times from one seed: off, and the modulated LayerNorm handed to the qkv / fc1
linears with ``ln_linear_method`` recompute and fused (inside Triton GEMMs): median
forward+backward time (no optimizer), peak memory, and the loss / gradient-norm difference of
the two on the same inputs. Writes ``fused_ln_linear_step.{json,md}`` under ``--out``.

Usage: ``python fused_ln_linear_step.py --out DIR`` (GPU) or ``--tiny --device cpu`` (a smoke
run: "on" vs "off", the fused plumbing on its CPU reference path; times meaningless).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

GRIDS = {"12.9k": (14, 46, 80), "tiny": (2, 4, 6)}  # latent T, H, W (patch 1x2x2)


def run(arm: str, hidden: int, layers: int, grid, device: str, steps: int, warmup: int) -> dict:
    from megatron.core import tensor_parallel
    from mugv_dit import build_model
    from mugv_dit.config import ModelConfig, RuntimeConfig
    from mugv_dit.model import PackedText

    on_gpu = device == "cuda"
    cfg = ModelConfig(hidden_size=hidden, num_layers=layers, num_heads=max(1, hidden // 72),
                      text_dim=4096 if on_gpu else 32)  # fmt: skip
    mode, _, method = arm.partition("/")
    runtime = RuntimeConfig(fused_ops=True, fused_ln_linear=mode,
                            ln_linear_method=method or "recompute",
                            attention_backend="auto" if on_gpu else "sdpa")  # fmt: skip
    dtype = torch.bfloat16 if on_gpu else torch.float32
    torch.manual_seed(0)
    if on_gpu:
        tensor_parallel.model_parallel_cuda_manual_seed(1234)
    model = build_model(cfg, dtype=dtype, runtime=runtime, cpu_init=not on_gpu)
    model = model.to(device).train()
    gen = torch.Generator().manual_seed(1)
    t, h, w = grid
    x = torch.randn(1, cfg.in_channels, t, h, w, generator=gen).to(device, dtype)
    text = PackedText.from_list([torch.randn(77, cfg.text_dim, generator=gen).to(device, dtype)])
    sigma = torch.tensor([0.4], device=device)
    fps = torch.tensor([24.0], device=device)
    noisy = torch.ones(1, t, dtype=torch.bool, device=device)
    noisy[:, 0] = False  # one clean conditioning frame: both modulation branches are used
    target: list[torch.Tensor] = []

    def step() -> float:
        for p in model.parameters():
            p.grad = None
        out = model(x, sigma, text, fps_B=fps, noisy_frames_BT=noisy)
        if not target:
            target.append(torch.randn(out.shape, generator=gen).to(device))
        loss = (out.float() - target[0]).pow(2).mean()
        loss.backward()
        return float(loss.detach())

    loss = step()
    grad_norm = float(
        torch.linalg.vector_norm(
            torch.stack([p.grad.float().norm() for p in model.parameters() if p.grad is not None])
        )
    )
    for _ in range(warmup):
        step()
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        if on_gpu:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    peak = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else float("nan")
    return {"mode": arm, "ms": statistics.median(times), "ms_all": times, "loss": loss,
            "grad_norm": grad_norm, "peak_GiB": peak, "tokens": t * (h // 2) * (w // 2)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--hidden", type=int, default=1728)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    from mugv_dit.parallel import init_distributed

    init_distributed(1, backend="auto" if args.device == "cuda" else "gloo")
    if args.tiny:
        args.hidden, args.layers, args.steps, args.warmup = 144, 2, 2, 1
    grid = GRIDS["tiny" if args.tiny else "12.9k"]
    on = "auto" if args.device == "cuda" else "on"
    modes = ("off", f"{on}/recompute", f"{on}/fused")
    rows = []
    for mode in modes:
        rows.append(run(mode, args.hidden, args.layers, grid, args.device, args.steps,
                        args.warmup))  # fmt: skip
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "ms_all"}), flush=True)
    base = rows[0]
    for r in rows:
        r["speedup_vs_off"] = base["ms"] / r["ms"]
        r["loss_rel_diff"] = abs(r["loss"] - base["loss"]) / abs(base["loss"])
        r["grad_norm_rel_diff"] = abs(r["grad_norm"] - base["grad_norm"]) / base["grad_norm"]
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    meta = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": device,
        "torch": torch.__version__,
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "hidden": args.hidden,
        "layers": args.layers,
    }
    from mugv_kernels._atomic import atomic_write_text

    out = Path(args.out)
    atomic_write_text(out / "fused_ln_linear_step.json", json.dumps({**meta, "rows": rows}))
    lines = [
        f"# fused_ln_linear step: {device}, {meta['date']}",
        "",
        f"`{meta['command']}`: {args.hidden} x {args.layers} layers, {base['tokens']} tokens, "
        "fused ops, attention auto, bf16, forward+backward (no optimizer)",
        "",
        "| fused_ln_linear / method | ms (median) | vs off | peak GiB | loss rel. diff | grad-norm rel. diff |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['ms']:.2f} | {r['speedup_vs_off']:.3f}x | {r['peak_GiB']:.2f} "
            f"| {r['loss_rel_diff']:.2e} | {r['grad_norm_rel_diff']:.2e} |"
        )
    md = "\n".join(lines) + "\n"
    atomic_write_text(out / "fused_ln_linear_step.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
