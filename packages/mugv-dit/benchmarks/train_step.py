"""Training-step throughput of MUG-DiT (Megatron-Core) vs diffusers WanTransformer3DModel.

Prints a table and writes JSON. Model FLOPs come from ``mugv_dit.flops`` (matmuls +
attention, x3 for forward+backward) and are used for BOTH implementations at matched
width / heads / depth / tokens, so TFLOP/s compare like for like.

    # one GPU, several cases, MUG and Wan side by side
    python train_step.py --impl mug wan --case 1728x8@12.9k 3456x4@12.9k --json out.json
    # several GPUs (weak scaling = same per-GPU batch, DP; or TP for big models)
    torchrun --nproc-per-node 4 train_step.py --impl mug --case 1728x8@12.9k --tp 1

Case syntax: HIDDENxLAYERS@TOKENS with TOKENS one of 12.9k (14x23x40 latent patches,
~360p 5 s) or 50.4k (14x45x80, 720p 5 s); head dim 72.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
from profile_step import profile_step

IMPLS = {
    "mug": "torch elementwise ops, SDPA attention, Megatron's default optimizer path",
    "mug-fused": "mugv_kernels fused ops, SDPA attention (cuDNN at head dim 72)",
    "mug-fa4": "fused ops + FlashAttention-4 (head dim 72 padded to 80 with the dq fix, else 96)",
    "mug-fused-adam": "mug-fa4 + fused AdamW + foreach grad norm under Megatron's step",
    "mug-fast": "mug-fa4 + fused AdamW + the sync-free optimizer step (the trainer's defaults)",
    "mug-graphed": "mug-fast with the whole step replayed as one CUDA graph (GraphedStep)",
    "mug-graphed-fb": "mug-fast with forward+backward+grad reduce graphed, the optimizer eager",
    "wan": "diffusers WanTransformer3DModel with its default SDPA attention",
    "wan-fa4": "the same Wan with its attention routed through the same FA4 call",
}
GRIDS = {"12.9k": (14, 46, 80), "50.4k": (14, 90, 160), "tiny": (2, 4, 6)}  # latent T, H, W
DEVICE = "cuda"  # --device cpu: a CPU/gloo smoke run of the same code (fp32, no timing value)


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def parse_case(text: str):
    shape, tokens = text.split("@")
    hidden, layers = (int(v) for v in shape.split("x"))
    if tokens not in GRIDS:
        raise ValueError(f"tokens {tokens!r} not in {sorted(GRIDS)}")
    return hidden, layers, tokens


def _timeit(step, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        step()
    _sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    _sync()
    return (time.perf_counter() - t0) / iters


def _phases(fwd_bwd: Callable[[], None], opt_step: Callable[[], None] | None, reps: int = 3):
    """Where a step's time goes, without the profiler: for forward+backward and for the
    optimizer step, the synced wall time and the host time to enqueue the work (the call
    returning before the GPU is done). Host time close to wall time means launch-bound."""
    out = {}
    for name, fn in (("fwd_bwd", fwd_bwd), ("opt", opt_step)):
        if fn is None:
            continue
        host = wall = 0.0
        for _ in range(reps):
            _sync()
            t0 = time.perf_counter()
            fn()
            t1 = time.perf_counter()
            _sync()
            host += t1 - t0
            wall += time.perf_counter() - t0
        out[f"{name}_s"], out[f"{name}_host_s"] = wall / reps, host / reps
    return out


def bench_mug(
    hidden,
    layers,
    grid,
    *,
    text_len,
    batch,
    tp,
    recompute,
    warmup,
    iters,
    with_opt,
    fused=False,
    sp=False,
    attention="auto",
    optimizer_path="megatron",
    graphed: str | None = None,
    profile=None,
):
    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from mugv_dit import build_model
    from mugv_dit.config import ModelConfig, RuntimeConfig
    from mugv_dit.model import PackedText
    from mugv_dit.optim.graphed_step import GraphedStep, capturable_adam, on_capture_stream
    from mugv_dit.optim.graphed_step import step_phase as phase
    from mugv_dit.parallel import parallel_context

    cfg = ModelConfig(
        hidden_size=hidden,
        num_layers=layers,
        num_heads=hidden // 72,
        text_dim=4096,
    )
    on_gpu = DEVICE == "cuda"
    if not on_gpu and attention == "fa4":
        attention = "sdpa"  # the CPU smoke run
    runtime = RuntimeConfig(recompute=recompute, fused_ops=fused, attention_backend=attention)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    if on_gpu:
        tensor_parallel.model_parallel_cuda_manual_seed(1234)
    model = build_model(
        cfg,
        dtype=dtype,
        layout=parallel_context(),
        runtime=runtime,
        sequence_parallel=sp,
        cpu_init=not on_gpu,
    )
    tcfg = model.config
    model = model.to(device=DEVICE).train()
    # a graphed step needs DDP's AccumulateGrad nodes on the capture stream (graphed_step.py)
    with on_capture_stream(graphed is not None and on_gpu):
        ddp = DistributedDataParallel(
            tcfg,
            DistributedDataParallelConfig(
                grad_reduce_in_fp32=True,
                overlap_grad_reduce=True,
                use_distributed_optimizer=True,
                bucket_size=40_000_000,
            ),
            model,
        )
    from megatron.core.optimizer import clip_grads
    from megatron.core.optimizer import optimizer as megatron_optimizer
    from mugv_dit.megatron_patches.multi_tensor import install_foreach_multi_tensor_ops
    from mugv_dit.optim.fused_adam import enable_fused_adam

    saved = (
        clip_grads.l2_norm_impl,
        clip_grads.multi_tensor_scale_impl,
        megatron_optimizer.multi_tensor_scale_impl,
    )
    fast_optimizer = optimizer_path != "megatron"
    if fast_optimizer:
        install_foreach_multi_tensor_ops()
    opt = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=1e-5,
            bf16=True,
            params_dtype=torch.bfloat16,
            use_distributed_optimizer=True,
            clip_grad=1.0,
        ),
        [ddp],
    )
    if fast_optimizer:
        enable_fused_adam(opt)  # CUDA; CPU too where torch has the fused kernel
    opt_step = opt.step
    if optimizer_path == "sync-free":
        from mugv_dit.optim.sync_free_step import SyncFreeStep

        opt_step = SyncFreeStep(opt).step
    t, h, w = grid
    x = torch.randn(batch, cfg.in_channels, t, h, w, device=DEVICE, dtype=dtype)
    text = PackedText.from_list(
        [torch.randn(text_len, 4096, device=DEVICE, dtype=dtype) for _ in range(batch)]
    )
    sigma = torch.rand(batch, device=DEVICE)
    fps = torch.full((batch,), 24.0, device=DEVICE)
    target = torch.randn(batch, cfg.in_channels, t, h, w, device=DEVICE)

    def fwd_bwd():
        phase("forward")
        ddp.zero_grad_buffer()
        out = ddp(x, sigma, text, fps_B=fps)
        loss = (out[:, : cfg.in_channels] - target).pow(2).mean()
        phase("backward")
        loss.backward()
        phase("grad reduce (finalize_model_grads)")
        finalize_model_grads([ddp])
        return loss

    def step():
        loss = fwd_bwd()
        phase("optimizer")
        opt_step()
        return loss

    graph = None
    if graphed is not None:
        # 2 eager warm-up steps on the capture stream, then capture + replays; "whole": the
        # optimizer inside the graph, "fwd_bwd": forward+backward+grad reduce graphed, the
        # optimizer eager after each replay
        if warmup < 3:
            raise ValueError("--warmup >= 3 for a graphed step (2 eager steps + capture)")

        def reset() -> None:  # what an aborted capture may leave behind
            for p in model.parameters():
                p.grad = None

        if graphed == "whole":
            capturable_adam(opt)
            graph = GraphedStep(step, warmup=2, reset=reset)
            step = graph
        else:
            graph = GraphedStep(fwd_bwd, warmup=2, reset=reset)
            fwd_bwd = graph

            def step():
                loss = fwd_bwd()
                opt_step()
                return loss

    sec = _timeit(step if with_opt or graphed else fwd_bwd, warmup, iters)
    if graphed == "whole":
        phases = _phases(step, None)
    else:
        phases = _phases(fwd_bwd, opt_step if with_opt else None)
    if profile:
        profile_step(step if with_opt or graphed else fwd_bwd, *profile)
    if graph is not None:
        phases["graph"] = {
            "mode": graphed,
            "captures": graph.captures,
            "replays": graph.replays,
            "failure": graph.failure.message() if graph.failure else None,
        }
    (
        clip_grads.l2_norm_impl,
        clip_grads.multi_tensor_scale_impl,
        megatron_optimizer.multi_tensor_scale_impl,
    ) = saved
    params = sum(p.numel() for p in model.parameters())
    mem = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else 0.0
    return cfg, sec, params, mem, parallel_state.get_tensor_model_parallel_world_size(), phases


def _patch_wan_attention_with_fa4() -> Callable[[], None]:
    """Route diffusers' Wan attention through the training FA4 call (same padding 72 -> 96);
    returns the undo."""
    from diffusers.models.transformers import transformer_wan
    from mugv_kernels.attention import fa4_dense

    original = transformer_wan.dispatch_attention_fn

    def dispatch(query, key, value, attn_mask=None, **kwargs):
        if attn_mask is not None:
            return original(query, key, value, attn_mask=attn_mask, **kwargs)
        return fa4_dense(query, key, value)  # [B, S, H, D] as diffusers passes them

    transformer_wan.dispatch_attention_fn = dispatch

    def undo() -> None:
        transformer_wan.dispatch_attention_fn = original

    return undo


def bench_wan(
    hidden, layers, grid, *, text_len, batch, warmup, iters, with_opt, fa4=False, profile=None
):
    from diffusers import WanTransformer3DModel
    from mugv_dit.config import ModelConfig

    cfg = ModelConfig(hidden_size=hidden, num_layers=layers, num_heads=hidden // 72, text_dim=4096)
    model = (
        WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=hidden // 72,
            attention_head_dim=72,
            in_channels=24,
            out_channels=24,
            text_dim=4096,
            freq_dim=256,
            ffn_dim=4 * hidden,
            num_layers=layers,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            eps=1e-6,
        )
        .to(device="cuda", dtype=torch.bfloat16)
        .train()
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    t, h, w = grid
    x = torch.randn(batch, 24, t, h, w, device="cuda", dtype=torch.bfloat16)
    text = torch.randn(batch, text_len, 4096, device="cuda", dtype=torch.bfloat16)
    ts = torch.randint(0, 1000, (batch,), device="cuda")
    target = torch.randn(batch, 24, t, h, w, device="cuda")

    def fwd_bwd():
        opt.zero_grad(set_to_none=True)
        out = model(x, ts, text, return_dict=False)[0]
        (out.float() - target).pow(2).mean().backward()

    def step():
        fwd_bwd()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    def opt_step():
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    undo = _patch_wan_attention_with_fa4() if fa4 else (lambda: None)
    try:
        sec = _timeit(step if with_opt else fwd_bwd, warmup, iters)
        phases = _phases(fwd_bwd, opt_step if with_opt else None)
        if profile:
            profile_step(step if with_opt else fwd_bwd, *profile)
    finally:
        undo()
    params = sum(p.numel() for p in model.parameters())
    mem = torch.cuda.max_memory_allocated() / 2**30
    return cfg, sec, params, mem, 1, phases


def _ms(row: dict, phase: str) -> str:
    if f"phase_{phase}_s" not in row:
        return "-"
    return f"{1e3 * row[f'phase_{phase}_s']:.1f} ({1e3 * row[f'phase_{phase}_host_s']:.1f})"


def _print_rows(rows: list[dict], args) -> None:
    """The table on stdout; with ``--json`` the rows and the machine in that file."""
    hdr = (
        f"{'impl':9} {'case':14} {'tp':>2} {'dp':>2} {'step_s':>8} {'TFLOP/s/GPU':>11} "
        f"{'tok/s/GPU':>10} {'mem GiB':>8}  fwd+bwd ms (host)  optimizer ms (host)"
    )
    print(hdr)
    for r in rows:
        if "error" in r:
            print(f"{r['impl']:9} {r['case']:14} {r['error']}")
            continue
        print(
            f"{r['impl']:9} {r['case']:14} {r['tp']:>2} {r['dp']:>2} {r['step_s']:8.3f} "
            f"{r['tflops_per_gpu']:11.1f} {r['tokens_per_s_per_gpu']:10.0f} {r['peak_mem_gib']:8.1f}"
            f"  {_ms(r, 'fwd_bwd'):>17}  {_ms(r, 'opt'):>19}"
        )
    for r in rows:
        g = r.get("phase_graph")
        if g:
            what = g["failure"] or f"captured {g['captures']}, replayed {g['replays']}"
            print(f"graph {r['impl']} {r['case']} ({g['mode']}): {what}")
    if args.json:
        meta = {
            "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
            "torch": torch.__version__,
            "label": args.label,
            "argv": os.sys.argv,
        }
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--impl",
        nargs="+",
        default=["mug"],
        choices=sorted(IMPLS),
        help=" ".join(f"{k}: {v}." for k, v in IMPLS.items()),
    )
    parser.add_argument(
        "--profile-dir",
        default=None,
        help="also profile one step of every run (kernel time by category, idle time) into "
        "DIR/profiles.jsonl",
    )
    parser.add_argument("--case", nargs="+", default=["1728x8@12.9k"])
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1, help="samples per DP rank")
    parser.add_argument("--text-len", type=int, default=128)
    parser.add_argument("--sp", action="store_true", help="sequence parallelism (TP > 1)")
    parser.add_argument("--recompute", default="none", choices=["none", "selective", "full"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--no-optimizer", action="store_true", help="time forward+backward only")
    parser.add_argument("--json", default=None)
    parser.add_argument("--label", default="")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device

    from contextlib import ExitStack

    from mugv_dit.flops import train_step_flops
    from mugv_dit.megatron_patches.cuda_on_cpu import cpu_megatron
    from mugv_dit.parallel import init_distributed

    init_distributed(args.tp, backend="nccl" if DEVICE == "cuda" else "gloo")
    stack = ExitStack()
    stack.enter_context(cpu_megatron(DEVICE == "cpu"))
    rank, world = dist.get_rank(), dist.get_world_size()
    dp = world // args.tp
    rows = []
    for case in args.case:
        hidden, layers, tok = parse_case(case)
        grid = GRIDS[tok]
        tokens = grid[0] * (grid[1] // 2) * (grid[2] // 2)
        for impl in args.impl:
            if impl == "wan" and world > 1:
                continue
            # the previous impl's model and optimizer sit in reference cycles until collected:
            # without this they count in this impl's peak memory (+4 GiB at 1728x8, H200,
            # 2026-12-03)
            gc.collect()
            if DEVICE == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            kw = dict(
                text_len=args.text_len,
                batch=args.batch,
                warmup=args.warmup,
                iters=args.iters,
                with_opt=not args.no_optimizer,
            )
            if args.profile_dir and rank == 0:
                os.makedirs(args.profile_dir, exist_ok=True)
                kw["profile"] = (os.path.join(args.profile_dir, "profiles.jsonl"), f"{impl} {case}")
            try:
                if impl.startswith("mug"):
                    cfg, sec, params, mem, tp, phases = bench_mug(
                        hidden,
                        layers,
                        grid,
                        tp=args.tp,
                        recompute=args.recompute,
                        fused=impl != "mug",
                        attention="fa4" if impl not in ("mug", "mug-fused") else "sdpa",
                        graphed={"mug-graphed": "whole", "mug-graphed-fb": "fwd_bwd"}.get(impl),
                        optimizer_path={
                            "mug-fast": "sync-free",
                            "mug-graphed": "sync-free",
                            "mug-graphed-fb": "sync-free",
                            "mug-fused-adam": "fused-adam",
                        }.get(impl, "megatron"),
                        **kw,
                    )
                else:
                    cfg, sec, params, mem, tp, phases = bench_wan(
                        hidden, layers, grid, fa4=impl == "wan-fa4", **kw
                    )
            except torch.OutOfMemoryError as exc:
                rows.append({"impl": impl, "case": case, "error": f"OOM: {str(exc)[:120]}"})
                continue
            flops = train_step_flops(cfg, tokens, args.text_len, args.batch)  # one DP replica
            rows.append(
                {
                    "impl": impl,
                    "case": case,
                    "hidden": hidden,
                    "layers": layers,
                    "heads": hidden // 72,
                    "tokens_per_sample": tokens,
                    "batch_per_dp_rank": args.batch,
                    "tp": tp,
                    "dp": dp,
                    "world": world,
                    "recompute": args.recompute if impl.startswith("mug") else "none",
                    "sequence_parallel": bool(args.sp and args.tp > 1),
                    "optimizer_in_step": not args.no_optimizer,
                    "step_s": sec,
                    "tflops_per_gpu": flops / sec / tp / 1e12,
                    "tokens_per_s_per_gpu": tokens * args.batch / sec / tp,
                    "params_local": params,
                    "peak_mem_gib": mem,
                    **{f"phase_{k}": v for k, v in phases.items()},
                }
            )
    if rank == 0:
        _print_rows(rows, args)
    dist.barrier()
    stack.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
