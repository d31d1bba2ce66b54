"""One-GPU generation benchmark of mugv-infer: seconds per CFG step, end-to-end latency, peak
memory; ours against the plain PyTorch reference of the same model in the same run.

Random weights (nothing downloaded): the DiT preset (default ``10b``), a random T5-v1.1-XXL
encoder (24 layers, 4096 wide; the real one is a local folder) and mugv-vae's released
architecture. Variants (same weights, same inputs):

* ``reference``: SDPA attention, eager PyTorch (no compile, no FA4);
* ``ours``: FA4 forward when ``flash_attn.cute`` imports (else SDPA) + mugv-kernels fused
  norms + torch.compile of each block;
* ``ours+cache``: ``ours`` with the step cache (``--step-cache THRESH``): speed-up, and the
  deviation of the final latent (max / mean abs) and of the decoded video (PSNR) against
  ``ours`` from the same noise.

One CFG step = one DiT call on batch 2 (cond + uncond) at 720p x 105 frames = 50,402 tokens.
End-to-end = T5 (prompt + negative, 300 tokens) + ``--e2e-steps`` CFG steps + VAE decode,
timed through ``MUGVPipeline`` with model CPU offload of T5 and the VAE (``--offload``).

Prints a table and writes JSON (device, date, command) to ``--out``.

Example (one H200):
    python packages/mugv-infer/benchmarks/bench_generate.py --preset 10b \
        --out docs/benchmarks/infer/h200-10b-720p.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_gb() -> float:
    return torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else 0.0


def _reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def build_dit(preset: str, device, dtype, seed: int = 0):
    from mugv_infer.models import MUGDiTTransformer3DModel
    from mugv_infer.models.presets import preset as dit_preset

    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = MUGDiTTransformer3DModel(**dit_preset(preset))
    finally:
        torch.set_default_dtype(default)
    return model.initialize_weights(seed).eval()


def build_t5(device, dtype, width: int = 4096):
    """Random T5-v1.1-XXL encoder (architecture only) built directly on the device; a
    2-layer one of ``width`` when the DiT is not 4096-wide in text (smoke runs)."""
    from transformers import T5Config, T5EncoderModel

    xxl = width == 4096
    cfg = T5Config(
        vocab_size=32128,
        d_model=width,
        d_kv=64 if xxl else 8,
        d_ff=10240 if xxl else 2 * width,
        num_layers=24 if xxl else 2,
        num_heads=64 if xxl else 4,
        feed_forward_proj="gated-gelu",
    )
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = T5EncoderModel(cfg)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def build_vae(device, dtype, tiny: bool = False):
    from mugv_vae.config import mugv_config, tiny_config
    from mugv_vae.model import MUGVAE

    return MUGVAE(tiny_config() if tiny else mugv_config()).to(device, dtype).eval()


def step_inputs(model, height, width, frames, device, dtype, text_len=300, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    t = 1 + (frames - 1) // 8
    x = torch.randn(
        2, model.config.in_channels, t, height // 8, width // 8, generator=g, device=device
    )
    text = torch.randn(2, text_len, model.config.text_dim, generator=g, device=device, dtype=dtype)
    mask = torch.ones(2, text_len, dtype=torch.bool, device=device)
    mask[1, 120:] = False  # the negative prompt is shorter
    return x.to(dtype), torch.tensor([0.7, 0.7], device=device), text, mask


def time_steps(model, inputs, n: int, warmup: int, backend: str) -> tuple[float, torch.Tensor]:
    x, s, text, mask = inputs
    out = None
    with torch.no_grad():
        for _ in range(warmup):
            out = model(x, s, text, mask, attention_kwargs={"backend": backend}).sample
        _sync()
        t0 = time.perf_counter()
        for _ in range(n):
            out = model(x, s, text, mask, attention_kwargs={"backend": backend}).sample
        _sync()
    return (time.perf_counter() - t0) / n, out


def set_compiled(model, on: bool):
    for block in model.blocks:
        if on:
            block.compile(dynamic=False)
        else:
            block._compiled_call_impl = None


def model_tflop_per_step(cfg, tokens: int, text_len: int = 300, batch: int = 2) -> float:
    """Matmul FLOPs of one DiT call (forward, batch 2): projections, MLP, attention."""
    d, L = cfg.hidden_size, cfg.num_layers
    f = cfg.ffn_hidden_size or 4 * d
    per_token = 2 * (3 * d * d + d * d + d * d + d * d + 2 * d * f)  # qkv, proj, cross q/proj, mlp
    attn = 2 * 2 * tokens * tokens * d  # QK^T and PV
    cross = 2 * 2 * tokens * text_len * d + 2 * text_len * 2 * d * d
    return batch * L * (tokens * per_token + attn + cross) / 1e12


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.float() - b.float()) ** 2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(4.0 / mse)  # range [-1, 1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="10b")
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--frames", type=int, default=105)
    ap.add_argument(
        "--steps", type=int, default=3, help="timed CFG steps per variant (0: e2e only)"
    )
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-fused", action="store_true", help="ours without mugv-kernels ops")
    ap.add_argument("--e2e-steps", type=int, default=0, help="> 0: time a full pipeline run")
    ap.add_argument("--offload", action="store_true", help="model CPU offload in the e2e run")
    ap.add_argument("--vae-tile", type=int, default=32, help="VAE decode tile (latents)")
    ap.add_argument("--step-cache", type=float, default=0.0, help="threshold; needs --e2e-steps")
    ap.add_argument("--device", default="cuda", help="cuda; cpu only for a smoke run")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("needs a CUDA GPU (--device cpu for a smoke run)", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    from mugv_kernels.attention import fa4_functions

    result = {
        "command": " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "host": platform.node(),
        "preset": args.preset,
        "size": [args.frames, args.height, args.width],
        "fa4": fa4_functions() is not None,
    }

    def save() -> None:  # after every part: a run cut short still leaves its numbers
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1))

    _reset_peak()
    t_build = time.perf_counter()
    model = build_dit(args.preset, device, dtype)
    _sync()
    grid = (1 + (args.frames - 1) // 8, args.height // 16, args.width // 16)
    tokens = grid[0] * grid[1] * grid[2] + 2
    result["tokens"] = tokens
    result["weights_gb"] = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
    result["build_s"] = time.perf_counter() - t_build
    save()
    if args.steps > 0:
        if result["fa4"] and device.type == "cuda":
            from mugv_kernels.attention import fa4_self_check

            dh = model.config.hidden_size // model.config.num_heads
            index = torch.cuda.current_device()
            # what `auto` (ours) will take: FA4 per path only after its self-check
            result["fa4_self_check"] = {
                kind: fa4_self_check(kind, dh, index, needs_backward=False) or "ok"
                for kind in ("dense", "varlen")
            }
            print(f"FA4 self-check at head dim {dh}: {result['fa4_self_check']}", flush=True)
            try:
                result["cross_attention"] = cross_attention_timing(
                    model.config, tokens, device, dtype
                )
            except Exception as exc:  # keep the rest of the run
                result["cross_attention_error"] = f"{type(exc).__name__}: {exc}"[:500]
                print(f"cross-attention timing failed: {result['cross_attention_error']}")
            save()
        result["dit"] = per_step(args, model, tokens, device, dtype, result, save)
        result.pop("dit_reference_only", None)
        save()
    if args.e2e_steps > 0:
        model.set_fused_ops(not args.no_fused)
        result["e2e"] = e2e(args, model, device, dtype, partial=save_e2e(result, save))
        save()
    if args.out:
        print(f"wrote {args.out}")
    return 0


def save_e2e(result: dict, save):
    def partial(part: dict) -> None:
        result["e2e"] = part
        save()

    return partial


def cross_attention_timing(cfg, tokens: int, device, dtype, iters: int = 20) -> dict:
    """One layer's text cross-attention at the benchmark's shape (batch 2: text of 300 and
    120 valid keys, padded to 300): SDPA with the key mask against FA4 on the packed keys."""
    from mugv_kernels.attention import PackedText, masked_cross_attention

    heads, dh = cfg.num_heads, cfg.hidden_size // cfg.num_heads
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(2, tokens, heads, dh, generator=g, device=device, dtype=dtype)
    k, v = (torch.randn(2, 300, heads, dh, generator=g, device=device, dtype=dtype) for _ in "kv")
    mask = torch.ones(2, 300, dtype=torch.bool, device=device)
    mask[1, 120:] = False
    packed = PackedText.from_mask(mask)
    res = {}
    with torch.no_grad():
        for name, backend in (("sdpa_masked_ms", "sdpa"), ("fa4_packed_ms", "fa4")):
            for _ in range(3):
                out = masked_cross_attention(q, k, v, mask, backend, packed)
            _sync()
            t0 = time.perf_counter()
            for _ in range(iters):
                out = masked_cross_attention(q, k, v, mask, backend, packed)
            _sync()
            res[name] = 1000 * (time.perf_counter() - t0) / iters
            res[name.replace("_ms", "_out")] = out
    a, b = res.pop("fa4_packed_out").float(), res.pop("sdpa_masked_out").float()
    res["fa4_vs_sdpa_rel_l2"] = ((a - b).norm() / b.norm()).item()
    res["layers"] = cfg.num_layers
    res["saved_s_per_cfg_step"] = (
        cfg.num_layers * (res["sdpa_masked_ms"] - res["fa4_packed_ms"]) / 1e3
    )
    print(
        f"cross-attention per layer: SDPA masked {res['sdpa_masked_ms']:.2f} ms, FA4 packed "
        f"{res['fa4_packed_ms']:.2f} ms (x{cfg.num_layers} layers: "
        f"{res['saved_s_per_cfg_step']:+.3f} s per CFG step saved), rel L2 "
        f"{res['fa4_vs_sdpa_rel_l2']:.1e}",
        flush=True,
    )
    return res


def per_step(args, model, tokens: int, device, dtype, result: dict, save=lambda: None) -> dict:
    """Seconds per CFG step (batch 2), plain reference against ours, same weights and inputs."""
    inputs = step_inputs(model, args.height, args.width, args.frames, device, dtype)
    flops = model_tflop_per_step(model.config, tokens)
    rows = []
    ref_s, ref_out = time_steps(model, inputs, args.steps, args.warmup, "sdpa")
    rows.append(("reference (SDPA, eager)", ref_s))
    print(f"reference: {ref_s:.3f} s / CFG step", flush=True)
    result["dit_reference_only"] = {"reference_s_per_cfg_step": ref_s}  # if ours is cut short
    save()
    ours_backend = "auto"
    compiled = not args.no_compile and device.type == "cuda"
    set_compiled(model, compiled)
    model.set_fused_ops(not args.no_fused)
    ours_s, ours_out = time_steps(model, inputs, args.steps, args.warmup + 1, ours_backend)
    set_compiled(model, False)
    checks = result.get("fa4_self_check", {})
    fa4_paths = [k for k in ("dense", "varlen") if checks.get(k) == "ok"]
    parts = [f"FA4 ({' + '.join(fa4_paths)})" if fa4_paths else "SDPA"]
    parts += [] if args.no_fused else ["fused"]
    parts += ["compile"] if compiled else []
    result["ours_variant"] = " + ".join(parts)
    rows.append((f"ours ({result['ours_variant']})", ours_s))
    rel = ((ours_out.float() - ref_out.float()).norm() / ref_out.float().norm()).item()
    print(f"{'variant':32s} {'s / CFG step':>12s} {'TFLOP/s':>8s}")
    for name, s in rows:
        print(f"{name:32s} {s:12.3f} {flops / s:8.0f}")
    print(f"speed-up {ref_s / ours_s:.2f}x; ours vs reference rel L2 {rel:.2e}", flush=True)
    return {
        "reference_s_per_cfg_step": ref_s,
        "ours_s_per_cfg_step": ours_s,
        "speedup": ref_s / ours_s,
        "ours_vs_reference_rel_l2": rel,
        "model_tflop_per_cfg_step": flops,
        "ours_tflops": flops / ours_s,
        "reference_tflops": flops / ref_s,
        "peak_memory_gb_dit_only": _peak_gb(),
    }


def e2e(args, model, device, dtype, partial=lambda part: None) -> dict:
    """T5 + N CFG steps + VAE decode through the pipeline; ours (and the step cache)."""
    from mugv_infer.pipeline import MUGVPipeline
    from mugv_infer.scheduler import MUGVFlowEulerScheduler

    # random init is fast on the GPU (T5-XXL: 4.7B parameters); offloaded parts then go to the CPU
    t5 = build_t5(device, dtype, model.config.text_dim)
    vae = build_vae(device, dtype, tiny=args.preset == "debug")
    if args.offload:
        t5.to("cpu")
        vae.to("cpu")
    pipe = MUGVPipeline(model, vae, MUGVFlowEulerScheduler())
    if args.offload:
        pipe.enable_model_cpu_offload(device=device)
        model.to("cpu")
    pipe.enable_vae_tiling(args.vae_tile, max(1, args.vae_tile // 4))
    set_compiled(model, not args.no_compile and device.type == "cuda")
    ids = torch.randint(0, 32128, (2, 300), generator=torch.Generator().manual_seed(0))

    def warmup() -> float:
        """One CFG step at the run's shapes, untimed: torch.compile and FA4's JIT."""
        t0 = time.perf_counter()
        with torch.no_grad():
            hidden = torch.zeros(2, 300, model.config.text_dim, dtype=dtype, device=device)
        pipe(
            prompt_embeds=hidden[:1],
            negative_prompt_embeds=hidden[1:, :120],
            height=args.height,
            width=args.width,
            num_frames=args.frames,
            num_inference_steps=1,
            generator=torch.Generator().manual_seed(1),
            output_type="latent",
        )
        _sync()
        return time.perf_counter() - t0

    def run(threshold: float, progress=None):
        _sync()
        _reset_peak()
        t0 = time.perf_counter()
        # T5 on the prompt and the negative prompt (token ids: the tokenizer is not timed)
        pipe._onload(t5)
        with torch.no_grad():
            hidden = t5(input_ids=ids.to(device)).last_hidden_state
        pipe._offload(t5)
        _sync()
        t_text = time.perf_counter() - t0
        g = torch.Generator().manual_seed(0)
        out = pipe(
            prompt_embeds=hidden[:1],
            negative_prompt_embeds=hidden[1:, :120],
            height=args.height,
            width=args.width,
            num_frames=args.frames,
            num_inference_steps=args.e2e_steps,
            generator=g,
            output_type="latent",
            step_cache_threshold=threshold,
            callback_on_step_end=progress,
        )
        _sync()
        t_dit = time.perf_counter() - t0 - t_text
        t1 = time.perf_counter()
        video = pipe.decode_latents(out.frames)
        _sync()
        t_vae = time.perf_counter() - t1
        return (
            {
                "total_s": time.perf_counter() - t0,
                "t5_s": t_text,
                "dit_s": t_dit,
                "vae_decode_s": t_vae,
                "peak_memory_gb": _peak_gb(),
                "skipped_steps": out.step_cache_skipped,
            },
            out.frames,
            video,
        )

    res = {"steps": args.e2e_steps, "offload": args.offload, "warmup_s": warmup()}
    print(f"e2e warm-up (compile, 1 CFG step): {res['warmup_s']:.1f} s", flush=True)
    started = time.perf_counter()

    def progress(_pipe, i, _t, tensors):  # partial numbers if the run is cut short
        _sync()
        res["ours_progress"] = {"steps_done": i + 1, "elapsed_s": time.perf_counter() - started}
        partial(res)
        return tensors

    exact, lat, video = run(0.0, progress)
    res.pop("ours_progress", None)
    res["ours"] = exact
    print(f"e2e ours: {json.dumps(exact)}", flush=True)
    partial(res)
    if args.step_cache > 0:
        cached, lat_c, video_c = run(args.step_cache)
        d = (lat_c - lat).abs()
        cached.update(
            threshold=args.step_cache,
            speedup_dit=exact["dit_s"] / cached["dit_s"],
            latent_max_abs=d.max().item(),
            latent_mean_abs=d.mean().item(),
            video_psnr_db=psnr(video_c, video),
        )
        res["ours+cache"] = cached
        print(f"e2e ours+cache: {json.dumps(cached)}")
    return res


if __name__ == "__main__":
    sys.exit(main())
