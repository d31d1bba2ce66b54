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
  ``ours`` from the same noise;
* ``--fp8``: ``ours fp8`` (FP8 e4m3 block linears, row-wise scales: mugv_infer.quantize, its
  load-time self-check on captured activations) and ``--graphed`` ``ours fp8 + graph`` (the
  block stack replayed as a CUDA graph: mugv_infer.graphed) beside them in the per-step table:
  s per CFG step, model TFLOP/s, rel L2 of the velocity against ours bf16, peak memory;
  ``--latent-steps N`` runs N denoising steps (CFG 4) of ours bf16 and ours fp8 from the same
  noise at ``--latent-size FxHxW`` and gives the final latent's rel L2; ``--profile`` writes
  the CUDA kernel table of one step of the last variant;
* ``--cache-curve T1,T2,..``: the step-cache calibration (mugv_infer.cache_calibration) over
  ``--cache-prompts`` random prompts: skipped steps, DiT speed-up and final-latent deviation
  per threshold, and the threshold it chooses;
* ``--low-memory``: the 24 GB recipe (FP8 weights, T5 / DiT / VAE moved to the GPU in turn,
  tiled VAE decode; the run capped at ``--memory-cap-gb`` of GPU memory).

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
import dataclasses
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
    ap.add_argument("--fp8", action="store_true", help="add ours fp8 (and use it end to end)")
    ap.add_argument("--fp8-backend", default="auto", help="auto | torchao | scaled_mm | emulated")
    ap.add_argument("--fp8-mode", default="dynamic", help="dynamic | weight_only")
    ap.add_argument(
        "--fp8-calibrate", type=float, default=0.0,
        help="> 0: choose the float8 layers for this final-latent rel L2 budget (at "
        "--latent-size, --latent-steps steps) before timing ours fp8",
    )  # fmt: skip
    ap.add_argument(
        "--fp8-calibration", type=Path, default=None,
        help="a calibration file (mugv-infer calibrate-fp8, or a fast2 run's "
        "fast2.fp8-calibration.json for the same preset): its layers stay bf16 in ours fp8 "
        "and the e2e run",
    )  # fmt: skip
    ap.add_argument("--fp8-weight-only-check", action="store_true",
                    help="also: final latent of all layers weight-only fp8 vs bf16")  # fmt: skip
    ap.add_argument("--pad-head-dim", default="auto", help="ours: attention_pad_head_dim")
    ap.add_argument("--variants", default="",
                    help="per-step variants, comma-separated (default reference,ours): "
                    "reference, ours, ours hd72, ours fp8, ... + graph")  # fmt: skip
    ap.add_argument("--graphed", action="store_true", help="add the CUDA-graphed block stack")
    ap.add_argument("--latent-steps", type=int, default=0, help="> 0: final-latent rel L2")
    ap.add_argument("--latent-size", default="33x256x448", help="FRAMESxHEIGHTxWIDTH")
    ap.add_argument("--profile", action="store_true", help="kernel table of one step")
    ap.add_argument("--e2e-steps", type=int, default=0, help="> 0: time a full pipeline run")
    ap.add_argument("--offload", action="store_true", help="model CPU offload in the e2e run")
    ap.add_argument("--low-memory", action="store_true", help="the 24 GB recipe end to end")
    ap.add_argument("--memory-cap-gb", type=float, default=24.0, help="--low-memory's cap")
    ap.add_argument("--vae-tile", type=int, default=32, help="VAE decode tile (latents)")
    ap.add_argument("--step-cache", type=float, default=0.0, help="threshold; needs --e2e-steps")
    ap.add_argument(
        "--cache-only", action="store_true", help="with --step-cache: no exact e2e run first"
    )
    ap.add_argument(
        "--save-latent", type=Path, help="e2e: write the final latent of the last run (safetensors)"
    )
    ap.add_argument(
        "--compare-latent", type=Path,
        help="e2e: rel L2 / max abs of the final latent against one --save-latent wrote",
    )  # fmt: skip
    ap.add_argument("--cache-curve", default="", help="thresholds 'T1,T2,..': calibration")
    ap.add_argument("--cache-prompts", type=int, default=2)
    ap.add_argument("--cache-steps", type=int, default=25)
    ap.add_argument("--cache-max-rel-l2", type=float, default=0.05)
    ap.add_argument("--device", default="cuda", help="cuda; cpu only for a smoke run")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("needs a CUDA GPU (--device cpu for a smoke run)", file=sys.stderr)
        return 2
    if args.pad_head_dim != "auto":
        args.pad_head_dim = int(args.pad_head_dim)
    if args.fp8_calibration is not None and args.fp8_calibrate > 0:
        ap.error("--fp8-calibration (a file) and --fp8-calibrate (make one): one of them")
    if args.fp8_calibration is not None:
        from mugv_infer.fp8_calibration import read_calibration

        try:  # a bad file stops the run here, before any model is built
            args.fp8_keep = read_calibration(args.fp8_calibration, args.fp8_mode)
        except ValueError as e:
            ap.error(str(e))
    else:
        args.fp8_keep = []
    if args.low_memory:
        args.fp8 = args.offload = True
        args.vae_tile = min(args.vae_tile, 16)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
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
    try:
        import torchao

        result["torchao"] = torchao.__version__
    except Exception as exc:  # not installed / does not import: the scaled_mm fallback
        result["torchao"] = f"unavailable ({type(exc).__name__}: {str(exc)[:120]})"

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
    variants = Variants(model, args, device, result)
    if args.fp8 and args.fp8_calibrate > 0:
        result["fp8_calibration"] = fp8_calibration(args, variants, device, dtype)
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
            save()
        result["dit"] = per_step(args, variants, tokens, device, dtype, result, save)
        result.pop("dit_reference_only", None)
        save()
    if args.latent_steps > 0 and not args.fp8_calibrate:  # (the calibration measured it)
        result["latent"] = latent_deviation(args, variants, device, dtype)
        save()
    if args.fp8_weight_only_check:
        result["weight_only"] = weight_only_latent(args, variants, device, dtype)
        save()
    if args.e2e_steps > 0 or args.cache_curve:
        name = "ours fp8" if args.fp8 else "ours"
        variants.use(name + (" + graph" if args.graphed and not args.low_memory else ""))
        if args.fp8:
            variants.drop_bf16()  # the bf16 linears freed: the run holds float8 weights only
        result["e2e"] = e2e(args, model, device, dtype, partial=save_e2e(result, save))
        save()
    if args.out:
        print(f"wrote {args.out}")
    return 0


class Variants:
    """The per-step variants on one model (same weights): attention backend, fused norms,
    head-dim pad, compiled blocks, bf16 or float8 block linears (all, or the calibrated
    set), graphed block stack."""

    def __init__(self, model, args, device, result):
        self.model, self.args, self.device, self.result = model, args, device, result
        self.switch = None  # mugv_infer.fp8_calibration.LayerSwitch (bf16 <-> float8)
        self.fp8_set = None  # the layers "ours fp8" runs in float8 (all, or calibrated)
        self.finals = {}  # the calibration's final latents by float8 set
        self.backend = "sdpa"

    def quantize(self) -> None:
        from mugv_infer.fp8_calibration import LayerSwitch
        from mugv_infer.quantize import load_time_probes, quantize_fp8

        if self.switch is not None:
            return
        set_compiled(self.model, False)
        t0 = time.perf_counter()
        probes = load_time_probes(self.model, self.device)
        originals: dict = {}
        report = quantize_fp8(
            self.model, backend=self.args.fp8_backend, device=self.device, probes=probes,
            mode=self.args.fp8_mode, keep=self.args.fp8_keep, keep_originals=originals,
        )  # fmt: skip
        _sync()
        self.switch = LayerSwitch(self.model, originals)
        self.fp8_set = set(self.switch.names)
        self.result["fp8"] = {**report.summary(), "quantize_s": time.perf_counter() - t0}
        if self.args.fp8_calibration is not None:
            self.result["fp8"]["calibration_file"] = str(self.args.fp8_calibration)
        print(f"fp8: {json.dumps(self.result['fp8'])}", flush=True)

    def drop_bf16(self) -> None:
        """The float8 set in place and the bf16 copies of its layers freed."""
        if self.switch is not None:
            self.switch.use(self.fp8_set)
            self.switch.bf16 = {n: m for n, m in self.switch.bf16.items() if n not in self.fp8_set}
            self.switch = None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def use(self, name: str) -> None:
        """``reference`` | ``ours`` | ``ours hd72`` (no head-dim pad) | ``ours fp8``, optionally
        `` + graph``."""
        from mugv_infer.graphed import apply_graphed_blocks, remove_graphed_blocks

        model, args = self.model, self.args
        base = name.removesuffix(" + graph")
        ref = base == "reference"
        if base == "ours fp8":
            self.quantize()
            if self.switch is not None:
                self.switch.use(self.fp8_set)
        elif self.switch is not None:
            self.switch.use(set())
        set_compiled(model, not ref and not args.no_compile and self.device.type == "cuda")
        model.set_fused_ops(not ref and not args.no_fused)
        self.backend = "sdpa" if ref else "auto"
        model.set_attention_backend(self.backend)
        model.set_attention_pad_head_dim(0 if ref or base == "ours hd72" else args.pad_head_dim)
        remove_graphed_blocks(model)
        if name.endswith(" + graph"):
            if self.device.type == "cuda":
                apply_graphed_blocks(model)
            else:  # the same runner with the eager stand-in of a graph (smoke runs)
                from mugv_infer.graphed import EagerRecorder

                apply_graphed_blocks(model, EagerRecorder())


def per_step(args, variants: Variants, tokens: int, device, dtype, result, save) -> dict:
    """Seconds per CFG step (batch 2) of each variant, same weights and inputs; the velocity
    of each against ours bf16 (and the reference)."""
    model = variants.model
    inputs = step_inputs(model, args.height, args.width, args.frames, device, dtype)
    c = model.config.in_channels
    flops = model_tflop_per_step(model.config, tokens)
    compiled = not args.no_compile and device.type == "cuda"
    names = (
        [n.strip() for n in args.variants.split(",")] if args.variants else ["reference", "ours"]
    )
    if args.fp8 and "ours fp8" not in names:
        names.append("ours fp8")
    if args.graphed and not any(n.endswith(" + graph") for n in names):
        names.append("ours fp8 + graph" if args.fp8 else "ours + graph")
    rows: dict[str, dict] = {}
    velocity: dict[str, torch.Tensor] = {}
    res = {"model_tflop_per_cfg_step": flops, "variants": rows}
    for name in names:
        variants.use(name)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        _reset_peak()
        warm = args.warmup + (1 if compiled and name != "reference" else 0)
        try:
            sec, out = time_steps(model, inputs, args.steps, warm, variants.backend)
        except Exception as exc:  # keep the other variants' numbers
            rows[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            print(f"{name}: failed: {rows[name]['error']}", flush=True)
            save()
            continue
        velocity[name] = out[:, :c].float()
        row = {"s_per_cfg_step": sec, "tflops": flops / sec, "peak_memory_gb": _peak_gb()}
        runner = model.blocks_runner
        if runner is not None:
            row["graph"] = "eager fallback: " + runner.failed if runner.failed else "replayed"
        rows[name] = row
        print(f"{name}: {sec:.3f} s / CFG step ({flops / sec:.0f} TFLOP/s)", flush=True)
        result["dit"] = res
        save()
    variants.use("ours")
    for name, v in velocity.items():
        for peer in ("ours", "reference", "ours hd72"):
            if peer in velocity and peer != name:
                key = {"ours hd72": "ours_hd72"}.get(peer, peer)
                rows[name][f"velocity_rel_l2_vs_{key}"] = _rel(v, velocity[peer])
    if args.profile and device.type == "cuda":
        res["profile"] = profile_step(args, variants, inputs, "ours fp8" if args.fp8 else "ours")
        variants.use("ours")
    ref, ours = rows.get("reference", {}), rows.get("ours", {})
    if "s_per_cfg_step" in ref and "s_per_cfg_step" in ours:  # the fields of earlier runs
        res.update(
            reference_s_per_cfg_step=ref["s_per_cfg_step"],
            ours_s_per_cfg_step=ours["s_per_cfg_step"],
            speedup=ref["s_per_cfg_step"] / ours["s_per_cfg_step"],
            ours_vs_reference_rel_l2=ours.get("velocity_rel_l2_vs_reference"),
            ours_tflops=ours["tflops"],
            reference_tflops=ref["tflops"],
            peak_memory_gb_dit_only=ours["peak_memory_gb"],
        )
    checks = result.get("fa4_self_check", {})
    fa4_paths = [k for k in ("dense", "varlen") if checks.get(k) == "ok"]
    parts = [f"FA4 ({' + '.join(fa4_paths)})" if fa4_paths else "SDPA"]
    parts += [] if args.no_fused else ["fused"]
    parts += ["compile"] if compiled else []
    result["ours_variant"] = " + ".join(parts)
    print(f"{'variant':24s} {'s / CFG step':>12s} {'TFLOP/s':>8s} {'rel L2 v':>9s} {'peak GB':>8s}")
    for name, row in rows.items():
        if "s_per_cfg_step" in row:
            rel = row.get("velocity_rel_l2_vs_ours", row.get("velocity_rel_l2_vs_ours_hd72"))
            rel = row.get("velocity_rel_l2_vs_reference") if rel is None else rel
            print(
                f"{name:24s} {row['s_per_cfg_step']:12.3f} {row['tflops']:8.0f} "
                f"{rel if rel is not None else float('nan'):9.2e} {row['peak_memory_gb']:8.1f}"
            )
    return res


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def profile_step(args, variants: Variants, inputs, name: str) -> dict:
    """CUDA kernel time of one CFG step by kind (matmul / attention / other) and the top
    kernels; the full table goes beside the JSON (``.profile.txt``)."""
    from torch.profiler import ProfilerActivity, profile

    variants.use(name)
    x, s, text, mask = inputs
    with torch.no_grad():
        variants.model(x, s, text, mask, attention_kwargs={"backend": variants.backend})
        _sync()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            variants.model(x, s, text, mask, attention_kwargs={"backend": variants.backend})
            _sync()
    kinds = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
    top = []
    for evt in prof.key_averages():
        us = getattr(evt, "device_time_total", None) or getattr(evt, "cuda_time_total", 0.0)
        if not us or evt.key.startswith(("cuda", "Cuda", "aten::", "Memcpy", "Memset")):
            continue
        low = evt.key.lower()
        if any(k in low for k in ("flash", "fmha", "attention", "attn", "softmax")):
            kind = "attention"
        elif any(k in low for k in ("gemm", "xmma", "nvjet", "scaled_mm", "matmul", "cutlass")):
            kind = "matmul"
        else:
            kind = "other"
        kinds[kind] += us / 1e6
        top.append((us / 1e6, kind, evt.key[:120], evt.count))
    top.sort(reverse=True)
    if args.out:
        args.out.with_suffix(".profile.txt").write_text(
            prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=40)
        )
    total = sum(kinds.values())
    print(
        f"profile ({name}): {total:.2f} s of kernels: "
        + ", ".join(f"{k} {v:.2f} s ({100 * v / max(total, 1e-9):.0f}%)" for k, v in kinds.items()),
        flush=True,
    )
    return {
        "variant": name,
        "kernel_s": total,
        "by_kind_s": kinds,
        "top": [{"s": s_, "kind": k, "kernel": n, "calls": c} for s_, k, n, c in top[:15]],
    }


def latent_deviation(args, variants: Variants, device, dtype) -> dict:
    """``--latent-steps`` denoising steps (CFG 4) from the same noise, ours bf16 against ours
    fp8, eager (no compile: new shapes), at ``--latent-size``: the final latent's rel L2."""
    from mugv_infer.pipeline import MUGVPipeline
    from mugv_infer.scheduler import MUGVFlowEulerScheduler

    frames, height, width = (int(v) for v in args.latent_size.split("x"))
    model = variants.model
    pipe = MUGVPipeline(model, build_vae("cpu", torch.float32, tiny=True), MUGVFlowEulerScheduler())
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator(device="cpu").manual_seed(5)
    text = torch.randn(2, 300, model.config.text_dim, generator=g).to(device, dtype)
    finals, seconds = {}, {}
    for name in ("ours", "ours fp8"):
        variants.use(name)
        set_compiled(model, False)
        _sync()
        t0 = time.perf_counter()
        out = pipe(
            prompt_embeds=text[:1], negative_prompt_embeds=text[1:, :120], height=height,
            width=width, num_frames=frames, num_inference_steps=args.latent_steps,
            generator=torch.Generator().manual_seed(0), output_type="latent",
        )  # fmt: skip
        _sync()
        seconds[name] = time.perf_counter() - t0
        finals[name] = out.frames.float().cpu()
    variants.use("ours")
    rel = _rel(finals["ours fp8"], finals["ours"])
    print(f"final latent after {args.latent_steps} steps at {args.latent_size}: fp8 vs bf16 "
          f"rel L2 {rel:.3e}", flush=True)  # fmt: skip
    return {
        "steps": args.latent_steps,
        "size": [frames, height, width],
        "final_latent_rel_l2_fp8_vs_bf16": rel,
        "final_latent_max_abs_fp8_vs_bf16": float(
            (finals["ours fp8"] - finals["ours"]).abs().max()
        ),
        "seconds": seconds,
    }


def small_generation(args, variants: Variants, device, dtype):
    """A function running ``--latent-steps`` denoising steps (CFG 4) at ``--latent-size`` from
    fixed noise and text, eager, with whatever layers the model holds -> the final latent."""
    from mugv_infer.pipeline import MUGVPipeline
    from mugv_infer.scheduler import MUGVFlowEulerScheduler

    frames, height, width = (int(v) for v in args.latent_size.split("x"))
    model = variants.model
    pipe = MUGVPipeline(model, build_vae("cpu", torch.float32, tiny=True), MUGVFlowEulerScheduler())
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator(device="cpu").manual_seed(5)
    text = torch.randn(2, 300, model.config.text_dim, generator=g).to(device, dtype)

    def run() -> torch.Tensor:
        out = pipe(
            prompt_embeds=text[:1], negative_prompt_embeds=text[1:, :120], height=height,
            width=width, num_frames=frames, num_inference_steps=args.latent_steps,
            generator=torch.Generator().manual_seed(0), output_type="latent",
        )  # fmt: skip
        _sync()
        return out.frames.float().cpu()

    return run


def fp8_calibration(args, variants: Variants, device, dtype) -> dict:
    """The float8 layer set for a final-latent budget (mugv_infer.fp8_calibration) at
    ``--latent-size``: DiT inputs of 2 steps of the bf16 generation replayed per cell, then
    generations from the same noise; "ours fp8" then runs the chosen set."""
    from mugv_infer.fp8_calibration import (
        calibrate_fp8,
        capture_dit_calls,
        kind_weight,
        make_cells,
        replay,
    )

    model = variants.model
    variants.quantize()
    variants.use("ours")  # bf16 linears, the attention / pad of ours
    set_compiled(model, False)  # small shapes, eager
    switch, steps = variants.switch, args.latent_steps
    generate = small_generation(args, variants, device, dtype)
    t0 = time.perf_counter()
    finals: dict = {}
    calls = capture_dit_calls(
        model, lambda: finals.setdefault(frozenset(), generate()), {0, steps // 2}
    )

    def velocity(names):
        switch.use(names)
        return replay(model, calls)

    def final(names):
        key = frozenset(names)
        if key not in finals:
            switch.use(names)
            finals[key] = generate()
        return finals[key]

    cfg = model.config
    cells = make_cells(cfg.num_layers)
    ffn = cfg.ffn_hidden_size or 4 * cfg.hidden_size
    benefits = [kind_weight(c.kind, cfg.hidden_size, ffn, args.fp8_mode) * len(c.blocks)
                for c in cells]  # fmt: skip
    cal = calibrate_fp8(
        switch, cells, benefits, velocity, final, args.fp8_calibrate, mode=args.fp8_mode,
        log=lambda m: print(f"fp8 calibration: {m}", flush=True),
    )  # fmt: skip
    variants.fp8_set = switch.names - set(cal.keep_bf16)
    variants.finals = finals
    if args.out:
        cal.write(args.out.with_suffix(".fp8-calibration.json"))
    res = cal.to_json()
    res["seconds"] = time.perf_counter() - t0
    res["steps"], res["size"] = steps, args.latent_size
    print(
        f"fp8 calibration ({res['seconds']:.0f} s): {cal.fp8_layers} of {len(switch.names)} "
        f"layers in float8 ({100 * cal.fp8_benefit_share:.0f}% of the benefit), final latent "
        f"rel L2 {cal.final_latent_rel_l2:.3e} (all float8: "
        f"{cal.all_fp8['final_latent_rel_l2']:.3e}; budget {args.fp8_calibrate}, "
        f"{'met' if cal.met else 'NOT met'})",
        flush=True,
    )
    variants.result["latent"] = {
        "steps": steps,
        "size": [int(v) for v in args.latent_size.split("x")],
        "final_latent_rel_l2_fp8_vs_bf16": cal.final_latent_rel_l2,
        "final_latent_rel_l2_all_fp8_vs_bf16": cal.all_fp8["final_latent_rel_l2"],
        "fp8_layers": cal.fp8_layers,
    }
    return res


def weight_only_latent(args, variants: Variants, device, dtype) -> dict:
    """Final latent of weight-only float8 (float8 storage, bf16 compute) against bf16 at
    ``--latent-size``: every block linear, and (after a calibration) its float8 set."""
    from mugv_infer.quantize import fp8_linear

    model = variants.model
    variants.quantize()
    variants.use("ours")
    set_compiled(model, False)
    switch = variants.switch
    generate = small_generation(args, variants, device, dtype)
    base = variants.finals[frozenset()] if frozenset() in variants.finals else generate()
    wo = {n: fp8_linear(lin, "emulated", "weight_only") for n, lin in switch.bf16.items()}
    res = {"steps": args.latent_steps, "size": args.latent_size}
    sets = {"all": set(wo)}
    if args.fp8_calibrate > 0:
        sets["calibrated set"] = set(variants.fp8_set)
    for label, names in sets.items():
        for name, (parent, attr) in switch.slots.items():
            setattr(parent, attr, wo[name] if name in names else switch.bf16[name])
        rel = _rel(generate(), base)
        res[label] = {"layers": len(names), "final_latent_rel_l2_vs_bf16": rel}
        print(f"weight-only fp8 ({label}, {len(names)} layers): final latent rel L2 {rel:.3e}",
              flush=True)  # fmt: skip
    switch.use(set())
    del wo
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return res


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


def e2e(args, model, device, dtype, partial=lambda part: None) -> dict:
    """T5 + N CFG steps + VAE decode through the pipeline; ours (and the step cache, the
    cache calibration curve); ``--low-memory`` under a GPU memory cap."""
    from mugv_infer.pipeline import MUGVPipeline
    from mugv_infer.scheduler import MUGVFlowEulerScheduler

    # random init is fast on the GPU (T5-XXL: 4.7B parameters); offloaded parts then go to the CPU.
    # Seeded: the same text features and VAE in every process (--save-latent / --compare-latent)
    torch.manual_seed(0)
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
    ids = torch.randint(0, 32128, (2, 300), generator=torch.Generator().manual_seed(0))
    res = {
        "steps": args.e2e_steps,
        "offload": args.offload,
        "fp8": args.fp8,
        "graphed": model.blocks_runner is not None,
        "low_memory": args.low_memory,
        "vae_tile": args.vae_tile,
    }
    if args.low_memory and device.type == "cuda":
        from mugv_infer.low_memory import cap_gpu_memory

        torch.cuda.empty_cache()
        res["memory_fraction"] = cap_gpu_memory(args.memory_cap_gb, device)
        res["memory_cap_gb"] = args.memory_cap_gb
        print(f"low-memory recipe: GPU memory capped at {args.memory_cap_gb} GB", flush=True)

    def warmup() -> float:
        """One CFG step at the run's shapes, untimed: torch.compile, FA4's JIT, the graph."""
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

    def text_features():
        pipe._onload(t5)
        with torch.no_grad():
            hidden = t5(input_ids=ids.to(device)).last_hidden_state
        pipe._offload(t5)
        return hidden

    def run(threshold: float, progress=None, steps=None, seed=0, hidden=None, decode=True):
        _sync()
        _reset_peak()
        t0 = time.perf_counter()
        # T5 on the prompt and the negative prompt (token ids: the tokenizer is not timed)
        if hidden is None:
            hidden = text_features()
        _sync()
        t_text = time.perf_counter() - t0
        out = pipe(
            prompt_embeds=hidden[:1],
            negative_prompt_embeds=hidden[1:, :120],
            height=args.height,
            width=args.width,
            num_frames=args.frames,
            num_inference_steps=steps or args.e2e_steps,
            generator=torch.Generator().manual_seed(seed),
            output_type="latent",
            step_cache_threshold=threshold,
            callback_on_step_end=progress,
        )
        _sync()
        t_dit = time.perf_counter() - t0 - t_text
        t1 = time.perf_counter()
        video = pipe.decode_latents(out.frames) if decode else None
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

    res["warmup_s"] = warmup()
    print(f"e2e warm-up (compile, 1 CFG step): {res['warmup_s']:.1f} s", flush=True)
    if args.cache_curve:

        def keep(curve: dict) -> None:
            res["cache_calibration"] = curve
            partial(res)

        res["cache_calibration"] = cache_curve(args, run, text_features, keep)
        partial(res)
        if args.e2e_steps <= 0:
            return res
    started = time.perf_counter()

    def progress(_pipe, i, _t, tensors):  # partial numbers if the run is cut short
        _sync()
        res["ours_progress"] = {"steps_done": i + 1, "elapsed_s": time.perf_counter() - started}
        partial(res)
        return tensors

    if args.cache_only and args.step_cache > 0:  # the cached run alone
        cached, lat_c, _video = run(args.step_cache, progress)
        res.pop("ours_progress", None)
        res["ours+cache"] = {**cached, "threshold": args.step_cache}
        res["ours+cache"].update(latent_io(args, lat_c))
        print(f"e2e ours+cache: {json.dumps(res['ours+cache'])}", flush=True)
        return res
    exact, lat, video = run(0.0, progress)
    res.pop("ours_progress", None)
    res["ours"] = exact
    if args.step_cache <= 0:
        exact.update(latent_io(args, lat))
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
            latent_rel_l2=_rel(lat_c, lat),
            video_psnr_db=psnr(video_c, video),
        )
        cached.update(latent_io(args, lat_c))  # the flags apply to the call's last run
        res["ours+cache"] = cached
        print(f"e2e ours+cache: {json.dumps(cached)}")
    return res


def latent_io(args, latent: torch.Tensor) -> dict:
    """``--compare-latent``: the final latent's deviation from one an earlier run saved (same
    seed, shapes and text features: e.g. the exact run of one call against the cached run of
    the next); ``--save-latent``: write it for such a comparison."""
    from safetensors.torch import load_file, save_file

    out: dict = {}
    if args.compare_latent is not None:
        ref = load_file(str(args.compare_latent))["latent"].to(latent.device)
        if ref.shape != latent.shape:
            raise SystemExit(
                f"--compare-latent {args.compare_latent}: shape {tuple(ref.shape)}, this run's "
                f"latent {tuple(latent.shape)}"
            )
        d = (latent.float() - ref.float()).abs()
        out.update(
            # vs_saved_*: apart from the in-run latent_* of an exact + cached call
            compared_with=str(args.compare_latent),
            vs_saved_rel_l2=_rel(latent, ref),  # |this - saved| / |saved|
            vs_saved_rel_l2_to_this=_rel(ref, latent),  # |this - saved| / |this|
            vs_saved_max_abs=d.max().item(),
            vs_saved_mean_abs=d.mean().item(),
        )
    if args.save_latent is not None:
        args.save_latent.parent.mkdir(parents=True, exist_ok=True)
        save_file({"latent": latent.detach().cpu().contiguous()}, str(args.save_latent))
        out["saved_latent"] = str(args.save_latent)
    return out


def cache_curve(args, run, text_features, keep=lambda _partial: None) -> dict:
    """The step-cache calibration over ``--cache-prompts`` prompts (random text features, a
    seed each): the curve and the chosen threshold (mugv_infer.cache_calibration)."""
    from mugv_infer.cache_calibration import calibrate

    thresholds = [float(v) for v in args.cache_curve.split(",") if v.strip()]
    base = text_features()
    g = torch.Generator().manual_seed(11)
    features = [base] + [
        base + 0.5 * torch.randn(base.shape, generator=g).to(base) * base.std()
        for _ in range(args.cache_prompts - 1)
    ]

    def generate(i: int, threshold: float):
        _stats, latents, _video = run(
            threshold, steps=args.cache_steps, seed=100 + i, hidden=features[i], decode=False
        )
        return latents, _stats["skipped_steps"]

    points: list[dict] = []

    def on_point(exact_s: float, point) -> None:  # the curve so far, kept if cut short
        points.append({**dataclasses.asdict(point), "worst_rel_l2": point.worst_rel_l2})
        keep({"partial": True, "exact_seconds": exact_s, "curve": points})

    cal = calibrate(
        generate, args.cache_prompts, args.cache_steps, thresholds, args.cache_max_rel_l2,
        sync=_sync, log=lambda m: print(f"cache curve: {m}", flush=True), on_point=on_point,
    )  # fmt: skip
    print(f"cache curve: chosen threshold {cal.threshold}", flush=True)
    return cal.to_json()


if __name__ == "__main__":
    sys.exit(main())
