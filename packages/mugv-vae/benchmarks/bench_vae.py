"""Encode/decode throughput and peak memory: mugv VAE vs diffusers AutoencoderKLWan (Wan2.1).

Both models random-initialised, bf16 weights and activations, one GPU, same process. For each
size ``TxHxW``: one warm-up, then ``--repeats`` timed runs (CUDA-synchronised wall clock);
frames/s = T / seconds; peak = ``torch.cuda.max_memory_allocated`` during the call (weights
included). Prints a Markdown table and writes JSON.

    python packages/mugv-vae/benchmarks/bench_vae.py --out bench.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime

import torch


def _time(fn, repeats: int) -> tuple[float, float, object]:
    fn()  # warm-up (cudnn autotune, allocator); its output is dropped at once
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times, out = [], None
    for _ in range(repeats):
        torch.cuda.synchronize()
        out = None  # free the previous output before the next call
        t = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return min(times), torch.cuda.max_memory_allocated() / 2**30, out


FAST = {
    "channels_last": True,
    "fused_group_norm_silu": True,
    "fused_nhwc_ops": True,
    "fold_upsample_conv": True,
}
VARIANTS = {
    # name: (VAERuntime fields, memory setting); "px": trunk frame batch floor(4e6 / (H*W))
    # frames (the previous run's rule), "budget": max_activation_bytes = --fast-budget,
    # "wan": the budget that aims at Wan's peak measured in this run (see main()).
    "ours-nchw-fused": ({"fused_group_norm_silu": True}, "px"),
    "ours-fast-nofold": ({**FAST, "fold_upsample_conv": False}, "budget"),
    "ours-fast": (FAST, "budget"),
    "ours-fast-mem": (FAST, "wan"),
}


def bench_ours(size, repeats, overrides, budget=None, frame_pixels=None):
    from mugv_vae.config import VAERuntime, mugv_config
    from mugv_vae.model import MUGVAE
    from mugv_vae.model.streaming import plan

    t, h, w = size
    enc_budget, dec_budget = budget if isinstance(budget, tuple) else (budget, budget)
    cfg = mugv_config()
    rt = VAERuntime(**overrides, max_activation_bytes=enc_budget)
    torch.manual_seed(0)  # same weights and input for every variant: outputs are comparable
    with torch.device("cuda"):
        model = MUGVAE(cfg, rt).to(torch.bfloat16).eval()
    if frame_pixels is not None:
        model.frame_batch_size = max(1, frame_pixels // (h * w))
    p_enc = plan(cfg, rt, h, w, 2, model.frame_batch_size, model.chunk_batch_size)
    x = torch.rand(1, 3, t, h, w, device="cuda", dtype=torch.bfloat16) * 2 - 1
    with torch.no_grad():
        enc_s, enc_mem, z = _time(lambda: model.encode(x), repeats)
        # The decode budget may differ (Wan's decode peak differs from its encode peak).
        rt = rt.model_copy(update={"max_activation_bytes": dec_budget})
        model.apply_runtime(rt)
        p_dec = plan(cfg, rt, h, w, 2, model.frame_batch_size, model.chunk_batch_size)
        dec_s, dec_mem, y = _time(lambda: model.decode(z, window=8), repeats)
    assert y.shape == x.shape
    params = sum(p.numel() for p in model.parameters())
    return {
        "encode_s": enc_s,
        "decode_s": dec_s,
        "encode_peak_gib": enc_mem,
        "decode_peak_gib": dec_mem,
        "latent_shape": list(z.shape),
        "params": params,
        "weights_gib": params * 2 / 2**30,
        "config": overrides,
        "max_activation_bytes": [enc_budget, dec_budget],
        "encode_plan": [p_enc.frame_batch, p_enc.chunk_batch],
        "decode_plan": [p_dec.frame_batch, p_dec.chunk_batch],
        "_latents": z.float().cpu(),
        "_video": y[:, :, ::8].float().cpu(),
    }


def bench_wan(size, repeats):
    from diffusers import AutoencoderKLWan

    t, h, w = size
    with torch.device("cuda"):
        model = AutoencoderKLWan().to(torch.bfloat16).eval()
    x = torch.rand(1, 3, t, h, w, device="cuda", dtype=torch.bfloat16) * 2 - 1
    with torch.no_grad():
        enc_s, enc_mem, z = _time(lambda: model.encode(x).latent_dist.mode(), repeats)
        dec_s, dec_mem, y = _time(lambda: model.decode(z).sample, repeats)
    assert y.shape[2:] == x.shape[2:], (y.shape, x.shape)
    params = sum(p.numel() for p in model.parameters())
    return {
        "encode_s": enc_s,
        "decode_s": dec_s,
        "encode_peak_gib": enc_mem,
        "decode_peak_gib": dec_mem,
        "latent_shape": list(z.shape),
        "params": params,
        "weights_gib": params * 2 / 2**30,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="33x256x256,33x480x832,105x720x1280")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--frame-pixels", type=int, default=4_000_000)
    ap.add_argument(
        "--fast-budget", type=int, default=8 << 30, help="max_activation_bytes of 'budget' rows"
    )
    ap.add_argument("--models", default="wan," + ",".join(VARIANTS))
    ap.add_argument("--out", default="bench_vae.json")
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    rows, reference = [], {}
    for size in sizes:
        wan_peak = None
        for name in args.models.split(","):
            torch.cuda.empty_cache()
            try:
                if name == "wan":
                    r = bench_wan(size, args.repeats)
                    wan_peak = (r["encode_peak_gib"] * 2**30, r["decode_peak_gib"] * 2**30)
                else:
                    overrides, memory = VARIANTS[name]
                    budget, px = None, None
                    if memory == "px":
                        px = args.frame_pixels
                    elif memory == "budget":
                        budget = args.fast_budget
                    else:  # aim at Wan's peaks: minus weights, input and output video
                        t, h, w = size
                        fixed = 412e6 * 2 + 2 * 3 * t * h * w * 2
                        peaks = wan_peak or (0, 0)
                        budget = tuple(max(1, int(peak - fixed)) for peak in peaks)
                    r = bench_ours(size, args.repeats, overrides, budget, px)
                r["encode_fps"] = size[0] / r["encode_s"]
                r["decode_fps"] = size[0] / r["decode_s"]
            except torch.OutOfMemoryError as e:
                r = {"error": f"OOM: {str(e)[:200]}"}
            r.update(model=name, size="x".join(map(str, size)))
            z, y = r.pop("_latents", None), r.pop("_video", None)
            if z is not None:
                ref = reference.setdefault(r["size"], (z, y))  # the first 'ours*' variant
                r["latent_max_abs_diff_vs_first_ours"] = float((z - ref[0]).abs().max())
                r["video_max_abs_diff_vs_first_ours"] = float((y - ref[1]).abs().max())
            rows.append(r)
            print(json.dumps(r), flush=True)
            with open(args.out + ".partial", "w") as f:
                json.dump(rows, f)
    table = [
        "| size (TxHxW) | model | encode frames/s | decode frames/s | enc+dec frames/s | encode peak GiB | decode peak GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            table.append(f"| {r['size']} | {r['model']} | {r['error']} | | | | |")
            continue
        both = r["size"].split("x")[0]
        both = int(both) / (r["encode_s"] + r["decode_s"])
        table.append(
            f"| {r['size']} | {r['model']} | {r['encode_fps']:.1f} | {r['decode_fps']:.1f} | {both:.1f} | {r['encode_peak_gib']:.2f} | {r['decode_peak_gib']:.2f} |"
        )
    print("\n".join(table))
    meta = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "dtype": "bfloat16",
        "repeats": args.repeats,
        "frame_pixels": args.frame_pixels,
        "fast_budget": args.fast_budget,
    }
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows, "table": "\n".join(table)}, f, indent=2)


if __name__ == "__main__":
    main()
