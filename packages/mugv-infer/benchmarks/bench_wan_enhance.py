"""The release's enhancer (mugv_infer.wan_enhancer) at the release's size: one enhancement of
a 1280 x 720 x 105 video on one GPU, and the frame-wise timestep forward beside diffusers'
own per-token timestep forward (the named peer) in the same run.

Random weights laid out like the release (nothing downloaded): a Wan2.1-1.3B DiT in Wan's
original names with the second patch embedding and a rank-256 LoRA in the release's
``pipe.dit.*`` names, both converted by ``convert.load_release_enhancer_dit``; the Wan2.1 VAE
(diffusers' ``AutoencoderKLWan`` defaults, random); random umT5 features ([1, 512, 4096]: the
5.7B-parameter encoder is not part of the step timed here).

Rows (bf16):
* ``dit framewise``: one DiT call, ``framewise_forward`` (one modulation per latent frame);
* ``dit diffusers per-token``: the same call through ``WanTransformer3DModel.forward`` with
  ``timestep`` ``[B, tokens]`` (frame 0 at t = 0); rel L2 against framewise;
* ``vae encode`` / ``vae decode``: untiled, as the release;
* ``enhance (DiT x2 + VAE)``: ``WanEnhancePipeline`` end to end minus the text encoder.
Each: seconds (median of ``--repeats`` after one warm-up), peak GPU memory.

Prints a table and writes JSON + markdown (device, date, command) to ``--out``.

    python packages/mugv-infer/benchmarks/bench_wan_enhance.py --out $OUT/wan_enhance.json
    python packages/mugv-infer/benchmarks/bench_wan_enhance.py --tiny --device cpu --out /tmp/w.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

FULL = dict(
    dim=1536,
    heads=12,
    layers=30,
    ffn=8960,
    text=4096,
    frames=105,
    height=1280,
    width=720,
    rank=256,
    vae_dim=96,
)
TINY = dict(
    dim=64, heads=4, layers=2, ffn=96, text=32, frames=9, height=32, width=48, rank=8, vae_dim=8
)
LATENT, FREQ = 16, 256


def release_dit_state(size: dict, device, dtype) -> dict[str, torch.Tensor]:
    """Random tensors under the release's DiT key names (Wan ``WanModel`` + patch_embedding2)."""
    d, f = size["dim"], size["ffn"]

    def r(*shape):
        return (torch.randn(*shape, device=device, dtype=torch.float32) * shape[-1] ** -0.5).to(
            dtype
        )

    s = {}
    for name in ("patch_embedding", "patch_embedding2"):
        s[f"{name}.weight"], s[f"{name}.bias"] = r(d, LATENT, 1, 2, 2), r(d)
    s["text_embedding.0.weight"], s["text_embedding.0.bias"] = r(d, size["text"]), r(d)
    s["text_embedding.2.weight"], s["text_embedding.2.bias"] = r(d, d), r(d)
    s["time_embedding.0.weight"], s["time_embedding.0.bias"] = r(d, FREQ), r(d)
    s["time_embedding.2.weight"], s["time_embedding.2.bias"] = r(d, d), r(d)
    s["time_projection.1.weight"], s["time_projection.1.bias"] = r(6 * d, d), r(6 * d)
    for b in range(size["layers"]):
        p = f"blocks.{b}."
        for attn in ("self_attn", "cross_attn"):
            for lin in "qkvo":
                s[f"{p}{attn}.{lin}.weight"], s[f"{p}{attn}.{lin}.bias"] = r(d, d), r(d)
            s[f"{p}{attn}.norm_q.weight"] = torch.ones(d, device=device, dtype=dtype)
            s[f"{p}{attn}.norm_k.weight"] = torch.ones(d, device=device, dtype=dtype)
        s[f"{p}norm3.weight"] = torch.ones(d, device=device, dtype=dtype)
        s[f"{p}norm3.bias"] = torch.zeros(d, device=device, dtype=dtype)
        s[f"{p}ffn.0.weight"], s[f"{p}ffn.0.bias"] = r(f, d), r(f)
        s[f"{p}ffn.2.weight"], s[f"{p}ffn.2.bias"] = r(d, f), r(d)
        s[f"{p}modulation"] = r(1, 6, d)
    s["head.head.weight"], s["head.head.bias"] = r(LATENT * 4, d), r(LATENT * 4)
    s["head.modulation"] = r(1, 2, d)
    return s


def release_lora_state(size: dict, device, dtype) -> dict[str, torch.Tensor]:
    d, f, k = size["dim"], size["ffn"], size["rank"]
    s = {}
    for b in range(size["layers"]):
        for t in ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q",
                  "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2"):  # fmt: skip
            out, inp = {"ffn.0": (f, d), "ffn.2": (d, f)}.get(t, (d, d))
            key = f"pipe.dit.blocks.{b}.{t}"
            s[f"{key}.lora_A.default.weight"] = (torch.randn(k, inp, device=device) * inp**-0.5).to(
                dtype
            )
            s[f"{key}.lora_B.default.weight"] = (torch.randn(out, k, device=device) * 0.01).to(
                dtype
            )
    return s


def timed(fn, device, repeats: int) -> tuple[float, float, object]:
    """(median seconds, peak GiB, last result) after one warm-up."""
    result = fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return statistics.median(times), peak, result


def attempt(add, name, fn, device, repeats: int = 1):
    """Time ``fn`` as row ``name``; an out-of-memory error is recorded, not raised."""
    try:
        s, p, result = timed(fn, device, repeats)
    except torch.OutOfMemoryError as e:
        add(name, float("nan"), float("nan"), error=f"out of memory: {e}"[:200])
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return None
    add(name, s, p)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (CPU smoke run)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--skip-per-token", action="store_true", help="do not run diffusers' per-token path"
    )
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    from diffusers import AutoencoderKLWan
    from mugv_infer.wan_enhancer.convert import load_release_enhancer_dit
    from mugv_infer.wan_enhancer.pipeline import WanEnhancePipeline
    from mugv_infer.wan_enhancer.transformer import frame_timesteps, framewise_forward

    size = TINY if args.tiny else FULL
    device = torch.device(args.device)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    torch.manual_seed(0)
    dit = load_release_enhancer_dit(
        release_dit_state(size, device, dtype),
        release_lora_state(size, device, dtype),
        attention_head_dim=size["dim"] // size["heads"],
    ).to(device)
    vae = AutoencoderKLWan(base_dim=size["vae_dim"]).to(device, dtype).eval()
    t_lat = 1 + (size["frames"] - 1) // 4
    h, w = size["height"] // 8, size["width"] // 8
    g = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(1, 2 * LATENT, t_lat, h, w, generator=g).to(device, dtype)
    text = torch.randn(1, 512, size["text"], generator=g).to(device, dtype)
    t_BT = frame_timesteps(300.0, 1, t_lat).to(device)
    rows = []

    def add(name, seconds, peak, **extra):
        rows.append(
            {"row": name, "seconds": round(seconds, 4), "peak_gib": round(peak, 2), **extra}
        )
        print(f"{name:32s} {seconds:9.3f} s   peak {peak:7.2f} GiB  {extra or ''}", flush=True)

    with torch.no_grad():
        s, p, ours = timed(lambda: framewise_forward(dit, hidden, t_BT, text), device, args.repeats)
        add("dit framewise", s, p, tokens=t_lat * (h // 2) * (w // 2))
        if not args.skip_per_token:
            per_token = t_BT.repeat_interleave((h // 2) * (w // 2), dim=1)
            try:
                s, p, ref = timed(
                    lambda: dit(hidden, per_token, text, return_dict=False)[0], device, args.repeats
                )
                rel = ((ours.float() - ref.float()).norm() / ref.float().norm()).item()
                add("dit diffusers per-token", s, p, rel_l2_vs_framewise=rel)
            except torch.OutOfMemoryError as e:
                rows.append(
                    {"row": "dit diffusers per-token", "error": f"out of memory: {e}"[:200]}
                )
                print("dit diffusers per-token: out of memory", flush=True)
            torch.cuda.empty_cache() if device.type == "cuda" else None
        video = (
            torch.rand(1, 3, size["frames"], size["height"], size["width"], generator=g).to(device)
            * 2
            - 1
        )
        z = attempt(
            add, "vae encode", lambda: vae.encode(video.to(dtype)).latent_dist.mode(), device
        )
        if z is not None:
            attempt(add, "vae decode", lambda: vae.decode(z).sample, device)

        class _Text:  # random umT5 features in place of the 5.7B encoder
            def __call__(self, ids, attention_mask=None):
                return type(
                    "O", (), {"last_hidden_state": text.expand(ids.shape[0], -1, -1).float()}
                )()

        class _Tok:
            def __call__(self, texts, **kw):
                n = len(texts)
                return type("T", (), {"input_ids": torch.ones(n, 512, dtype=torch.long),
                                      "attention_mask": torch.ones(n, 512, dtype=torch.long)})()  # fmt: skip

        pipe = WanEnhancePipeline(_Tok(), None, dit, vae)
        pipe.text_encoder = _Text()
        pipe.set_progress_bar_config(disable=True)
        run = lambda: pipe(video, generator=torch.Generator().manual_seed(0)).frames  # noqa: E731
        attempt(add, "enhance (DiT x2 + VAE)", run, device)

    meta = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "date": dt.date.today().isoformat(),
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "size": size,
        "dtype": str(dtype),
        "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"# release enhancer ({meta['device']}, {meta['date']})", "", f"`{meta['command']}`", "",
             "| row | s | peak GiB | notes |", "|---|---|---|---|"]  # fmt: skip
    for r in rows:
        notes = {k: v for k, v in r.items() if k not in ("row", "seconds", "peak_gib")}
        lines.append(
            f"| {r['row']} | {r.get('seconds', '')} | {r.get('peak_gib', '')} | {notes or ''} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
