"""Where does encode/decode time go? torch.profiler kernel tables per variant and size.

For each size and variant (see ``VARIANTS``): one warm-up, a timed encode and decode (best
of ``--repeats``), then one profiled encode and decode whose CUDA kernels are summed by name
and by category (convolution, GroupNorm, attention, layout copies, up-sampling, ...). Also
measures the trunk's peak activation bytes per frame (1 and 2 frames through
``trunk.encode``/``trunk.decode``) to check the estimates of ``mugv_vae.model.streaming``.

    python packages/mugv-vae/benchmarks/profile_vae.py --out profile.json
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import defaultdict

import torch

VARIANTS = {
    # name: VAERuntime fields
    "nchw-fused": {"fused_group_norm_silu": True},
    "cl-fused": {"fused_group_norm_silu": True, "channels_last": True},
    "cl-fused-compile": {
        "fused_group_norm_silu": True,
        "channels_last": True,
        "compile_trunk": True,
    },
    "cl-nhwc": {"fused_group_norm_silu": True, "channels_last": True, "fused_nhwc_ops": True},
    "cl-fast": {
        "fused_group_norm_silu": True,
        "channels_last": True,
        "fused_nhwc_ops": True,
        "fold_upsample_conv": True,
    },
}

CATEGORIES = [  # (category, regex over kernel names), first match wins
    ("attention", r"fmha|flash|attention|softmax|nvjet|gemv|cublas"),
    ("conv", r"conv|implicit_gemm|xmma|cudnn|fprop|dgrad|wgrad|winograd"),
    ("groupnorm", r"gn_|group_norm|GroupNorm|RowwiseMoments|ComputeFusedParams|scale_shift"),
    ("layout/copy", r"copy|transpose|Transpose|nchwToNhwc|nhwcToNchw|permute|contiguous|cat"),
    ("upsample", r"upsample|nearest|interp"),
    ("pad", r"pad|constant_pad"),
    ("elementwise", r"elementwise|vectorized|unrolled|add|mul|silu|triton_"),
]


def categorize(name: str) -> str:
    for cat, pattern in CATEGORIES:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return cat
    return "other"


def kernel_table(prof) -> tuple[dict[str, float], list[tuple[str, float, int]]]:
    by_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for evt in prof.events():
        if evt.device_type != torch.autograd.DeviceType.CUDA:
            continue
        rec = by_name[evt.name]
        rec[0] += evt.device_time_total / 1e3  # ms
        rec[1] += 1
    cats: dict[str, float] = defaultdict(float)
    for name, (ms, _) in by_name.items():
        cats[categorize(name)] += ms
    top = sorted(((n[:110], ms, k) for n, (ms, k) in by_name.items()), key=lambda r: -r[1])
    return dict(cats), top[:14]


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return min(times)


def trunk_bytes(model, h: int, w: int) -> dict[str, float]:
    """Peak bytes above the resting allocation for 1 and 2 frames through the trunk."""
    out = {}
    feat = model.config.trunk.feature_channels
    for mode in ("encode", "decode"):
        for n in (1, 2):
            if mode == "encode":
                x = torch.rand(n, 3, h, w, device="cuda", dtype=torch.bfloat16)
                fn = model.trunk.encode
            else:
                x = torch.rand(n, feat, h // 8, w // 8, device="cuda", dtype=torch.bfloat16)
                fn = model.trunk.decode
            fn(x)
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            y = fn(x)
            torch.cuda.synchronize()
            out[f"{mode}_{n}"] = (torch.cuda.max_memory_allocated() - base) / 2**20
            del x, y
    return out


def run_variant(name: str, size, repeats: int, frame_batch: int | None, profile: bool) -> dict:
    from mugv_vae.config import VAERuntime, mugv_config
    from mugv_vae.model import MUGVAE

    t, h, w = size
    cfg = mugv_config()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = MUGVAE(cfg, VAERuntime(**VARIANTS[name])).to(torch.bfloat16).eval()
    model.frame_batch_size = frame_batch
    x = torch.rand(1, 3, t, h, w, device="cuda", dtype=torch.bfloat16) * 2 - 1
    row: dict = {"variant": name, "size": f"{t}x{h}x{w}", "frame_batch": frame_batch}
    with torch.no_grad():
        t0 = time.perf_counter()
        z = model.encode(x)
        y = model.decode(z, window=8)
        torch.cuda.synchronize()
        row["first_call_s"] = time.perf_counter() - t0
        del y
        torch.cuda.reset_peak_memory_stats()
        row["encode_s"] = best_of(lambda: model.encode(x), repeats)
        row["encode_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
        row["decode_s"] = best_of(lambda: model.decode(z, window=8), repeats)
        row["decode_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        row["enc_dec_fps"] = t / (row["encode_s"] + row["decode_s"])
        if profile:
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as tprofile

            for mode, fn in (
                ("encode", lambda: model.encode(x)),
                ("decode", lambda: model.decode(z)),
            ):
                with tprofile(activities=[ProfilerActivity.CUDA]) as prof:
                    fn()
                    torch.cuda.synchronize()
                cats, top = kernel_table(prof)
                row[f"{mode}_categories_ms"] = cats
                row[f"{mode}_top_kernels"] = top
        if name.startswith("cl-") and profile:
            row["trunk_peak_mib"] = trunk_bytes(model, h, w)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="33x256x256,33x480x832,33x720x1280")
    ap.add_argument("--variants", default="nchw-fused,cl-fused,cl-fused-compile")
    ap.add_argument("--frame-pixels", type=int, default=4_000_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-profile-variants", default="cl-fused-compile")
    ap.add_argument("--out", default="profile_vae.json")
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    rows = []
    for name in args.variants.split(","):  # variants outer: a slow compile comes last
        for s in args.sizes.split(","):
            size = tuple(int(v) for v in s.split("x"))
            fb = max(1, args.frame_pixels // (size[1] * size[2]))
            try:
                row = run_variant(
                    name, size, args.repeats, fb, name not in args.no_profile_variants.split(",")
                )
            except Exception as e:  # report and go on: one failing variant must not end the run
                row = {"variant": name, "size": s, "error": f"{type(e).__name__}: {str(e)[:300]}"}
                torch.cuda.empty_cache()
            torch.cuda.empty_cache()
            rows.append(row)
            print(json.dumps(row), flush=True)
            with open(args.out, "w") as f:
                json.dump(rows, f, indent=1)
    print("| size | variant | enc s | dec s | enc+dec fps | enc GiB | dec GiB | first call s |")
    for r in rows:
        if "error" in r:
            print(f"| {r['size']} | {r['variant']} | {r['error'][:80]} |")
            continue
        print(
            f"| {r['size']} | {r['variant']} | {r['encode_s']:.3f} | {r['decode_s']:.3f} | "
            f"{r['enc_dec_fps']:.1f} | {r['encode_peak_gib']:.2f} | {r['decode_peak_gib']:.2f} | "
            f"{r['first_call_s']:.1f} |"
        )
        for mode in ("encode", "decode"):
            if f"{mode}_categories_ms" in r:
                cats = ", ".join(
                    f"{k} {v:.1f}"
                    for k, v in sorted(r[f"{mode}_categories_ms"].items(), key=lambda kv: -kv[1])
                )
                print(f"    {mode} ms: {cats}")


if __name__ == "__main__":
    main()
