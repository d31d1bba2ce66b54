"""Launch-parameter sweep of the norm kernels (Triton only), each variant against the defaults
timed in the same run, plus (``--check``) their GPU parity cases.

Usage: ``python tune_norms.py --out DIR [--check] [--kernels qk gn modln gated]``.
Writes ``tune.json`` (every row) atomically; prints one line per variant and shape.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import torch
from mugv_kernels._launch import TUNING

sys.path.insert(0, str(Path(__file__).parent))
import bench_kernels as bk

#: (kernel prefix, TUNING key, overrides); ``{}`` = the defaults
VARIANTS = [
    ("qk", "qk", {}),
    ("qk", "qk", {"tile_elems": 2048}),
    ("qk", "qk", {"tile_elems": 8192}),
    ("qk", "qk", {"tile_elems": 16384}),
    ("qk", "qk", {"warp_elems": 256}),
    ("qk", "qk", {"warp_elems": 1024}),
    ("qk", "qk", {"programs_per_sm": 4}),
    ("qk", "qk", {"programs_per_sm": 32}),
    ("qk", "qk", {"max_heads": 4}),
    ("qk", "qk", {"split": 0}),
    ("qk", "qk_bwd", {"tile_elems": 1024}),
    ("qk", "qk_bwd", {"tile_elems": 4096}),
    ("qk", "qk_bwd", {"warp_elems": 128}),
    ("qk", "qk_bwd", {"warp_elems": 512}),
    ("qk", "qk_bwd", {"programs_per_sm": 8}),
    ("gn", "gn_coop", {}),
    ("gn", "gn_coop", {"enabled": 0}),
    ("gn", "gn_coop", {"item_elems": 16384}),
    ("gn", "gn_coop", {"item_elems": 65536}),
    ("gn", "gn_coop", {"programs_per_sm": 2}),
    ("gn", "gn_coop", {"programs_per_sm": 8}),
    ("gn", "gn_coop", {"num_warps": 4}),
    ("gn", "gn_coop", {"num_warps": 16}),
    ("gn", "gn_coop", {"tile": 2048}),
    ("gn", "gn_coop", {"tile": 8192}),
    ("modln", "modln_fwd", {}),
    ("modln", "modln_fwd", {"tile_elems": 4096}),
    ("modln", "modln_fwd", {"tile_elems": 4096, "programs_per_sm": 16}),
    ("modln", "modln_fwd", {"tile_elems": 4096, "programs_per_sm": 64}),
    ("modln", "modln_fwd", {"tile_elems": 2048, "programs_per_sm": 64}),
    ("gated", "gated_fwd", {}),
    ("gated", "gated_fwd", {"tile_elems": 4096}),
    ("gated", "gated_fwd", {"tile_elems": 4096, "programs_per_sm": 16}),
    ("gated", "gated_fwd", {"tile_elems": 4096, "programs_per_sm": 64}),
    ("gated", "gated_fwd", {"tile_elems": 16384}),
]
KERNELS = {
    "qk": "qk_rmsnorm_rope3d",
    "gn": "group_norm_silu",
    "modln": "modulated_layer_norm",
    "gated": "gated_residual_modulated_norm",
}


def check(prefixes: list[str]) -> bool:
    """GPU parity cases of the chosen kernels (medium shapes, fp32 and bf16)."""
    from mugv_kernels.selfcheck import cases, run_case

    tags = {"qk": "qk_rope", "gn": "gn_silu", "modln": "modln", "gated": "gated"}
    ok = True
    for case in cases("medium", (torch.float32, torch.bfloat16)):
        if not any(case.name.startswith(tags[p]) for p in prefixes):
            continue
        res = run_case(case, "cuda")
        ok &= res.ok
        print(res.line(), flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--check", action="store_true", help="run the parity cases and exit")
    parser.add_argument("--kernels", nargs="+", default=list(KERNELS))
    parser.add_argument("--until-s", type=float, default=240.0)
    args = parser.parse_args(argv)
    if args.check:
        from mugv_kernels.group_norm import _resident_programs

        print("co-resident cooperative programs:", _resident_programs(torch.device("cuda")))
        return 0 if check(args.kernels) else 1
    cfg = bk.BenchConfig(out=args.out, impls=("triton",))
    device = torch.device("cuda")
    problems = bk.dit_problems(cfg, device, torch.bfloat16) + bk.vae_problems(
        cfg, device, torch.bfloat16
    )
    start = time.perf_counter()
    rows = []
    for prefix, key, params in VARIANTS:
        if prefix not in args.kernels or time.perf_counter() - start > args.until_s:
            continue
        probs = [p for p in problems if p.kernel == KERNELS[prefix] and "per-token" not in p.shape]
        probs = [p for p in probs if "branch" not in p.shape]
        old = dict(TUNING[key])
        TUNING[key].update(params)
        variant = f"{key}." + (",".join(f"{k}={v}" for k, v in params.items()) or "default")
        try:
            for prob in probs if prefix == "gn" else [probs[0], probs[-1]]:
                for row in bk.bench_problem(prob, cfg, device, False, ("triton",), False):
                    rows.append({**row, "variant": variant})
                    print(f"{variant:44s} {prob.shape:20s} fwd {row.get('fwd_ms', 0):.4f} "
                          f"fwd_bwd {row.get('fwd_bwd_ms', 0):.4f} "
                          f"{row.get('fwd_error', '')}{row.get('fwd_bwd_error', '')}",
                          flush=True)  # fmt: skip
        finally:
            TUNING[key].clear()
            TUNING[key].update(old)
    payload = {
        "device": torch.cuda.get_device_name(device),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["tune_norms.py", *sys.argv[1:]]),
        "rows": rows,
    }
    bk._atomic_write(Path(args.out) / "tune.json", json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
