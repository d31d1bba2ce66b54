#!/usr/bin/env python3
"""Reproducer: FlashAttention-4 (flash-attn-4 4.0.0b36) SM90 backward gives a wrong dQ at head dims
72 and 80; checks out/dq/dk/dv against float64 SDPA with and without mugv_kernels.fa4_sm90_dq_fix.

  python3 fa4_sm90_dq.py driver --out DIR [--budget 380]   # everything below, each variant in a fresh process
  python3 fa4_sm90_dq.py check --variant patched|none|kernel32 --out DIR --deadline EPOCH
  python3 fa4_sm90_dq.py warm --hd 80 [--gqa|--varlen]       # compile (unpatched + patched) into the JIT cache

Inputs: bf16 randn q, k, v, dout, [B=1, S, H=8, D], S = 1000 and 12,880, softmax_scale = D**-0.5.
Reference: torch SDPA in float64 (math backend), one head at a time, on the bf16-rounded inputs.
Error: relative L2, ||x - ref|| / ||ref||. cuDNN SDPA in bf16 on the same inputs gives the error
level to expect from a correct bf16 kernel (~2e-3).
Timing: B=1, S=12,880, 24 heads, fwd and fwd+bwd, median of CUDA-event times, vs cuDNN SDPA.
"""

# ruff: noqa: SIM115  (log files stay open as the children's stdout; short script files)
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

DENSE_HDS = [64, 72, 80, 88, 96, 128]
SEQS = [1000, 12880]
HEADS = 8


# ----------------------------------------------------------------------------------------------
# variants
def apply_variant(variant: str) -> None:
    if variant == "none":
        return
    if variant == "patched":
        from mugv_kernels import fa4_sm90_dq_fix as apply_patch

        apply_patch.apply()
        assert apply_patch.is_applied()
        assert apply_patch.apply()  # idempotent
        return
    if variant == "kernel32":
        # Fallback candidate: make the SM90 main kernel round head_dim to 32 like the postprocess
        # (72/80 then run a 96-wide tile: right, but as slow as padding to 96).
        from flash_attn.cute import flash_bwd_sm90 as m

        cls = m.FlashAttentionBackwardSm90
        orig = cls.__init__

        def __init__(self, dtype, head_dim, head_dim_v=None, *a, **kw):
            orig(self, dtype, head_dim, head_dim_v, *a, **kw)
            if not self.dKV_swapAB:
                hv = head_dim_v if head_dim_v is not None else head_dim
                self.tile_hdim = -(-head_dim // 32) * 32
                self.tile_hdimv = -(-hv // 32) * 32
                self.check_hdim_oob = head_dim != self.tile_hdim
                self.check_hdim_v_oob = hv != self.tile_hdimv

        cls.__init__ = __init__
        return
    raise ValueError(variant)


# ----------------------------------------------------------------------------------------------
def fa4_call(q, k, v, **kw):
    from flash_attn.cute import flash_attn_func

    r = flash_attn_func(q, k, v, **kw)
    return r[0] if isinstance(r, tuple) else r


def fa4_varlen_call(q, k, v, cu, max_s):
    from flash_attn.cute import flash_attn_varlen_func

    r = flash_attn_varlen_func(
        q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max_s, max_seqlen_k=max_s
    )
    return r[0] if isinstance(r, tuple) else r


def make_inputs(S, H, D, Hk=None, seed=0, B=1):
    import torch

    g = torch.Generator(device="cuda").manual_seed(seed * 1000003 + S * 131 + D)
    Hk = Hk or H

    def mk(h):
        return torch.randn(B, S, h, D, device="cuda", dtype=torch.bfloat16, generator=g)

    return mk(H), mk(Hk), mk(Hk), mk(H)


def ref_fp64(q, k, v, dout, scale):
    """float64 SDPA per (batch, head), on [B, S, H, D] tensors; GQA by head groups."""
    import torch
    import torch.nn.functional as F

    B, _S, H, _D = q.shape
    Hk = k.shape[2]
    grp = H // Hk
    out = torch.empty(q.shape, dtype=torch.float64, device=q.device)
    dq = torch.empty_like(out)
    dk = torch.zeros(k.shape, dtype=torch.float64, device=q.device)
    dv = torch.zeros_like(dk)
    for b in range(B):
        for h in range(H):
            hk = h // grp
            qh = q[b, :, h].double().requires_grad_()
            kh = k[b, :, hk].double().requires_grad_()
            vh = v[b, :, hk].double().requires_grad_()
            o = F.scaled_dot_product_attention(
                qh[None, None], kh[None, None], vh[None, None], scale=scale
            )[0, 0]
            gq, gk, gv = torch.autograd.grad(o, (qh, kh, vh), dout[b, :, h].double())
            out[b, :, h] = o.detach()
            dq[b, :, h] = gq
            dk[b, :, hk] += gk
            dv[b, :, hk] += gv
            del o, gq, gk, gv
    return out, dq, dk, dv


def rel(a, b):
    return float((a.double() - b).norm() / b.norm())


def run_fa4(q, k, v, dout, scale):
    import torch

    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    o = fa4_call(q, k, v, softmax_scale=scale)
    dq, dk, dv = torch.autograd.grad(o, (q, k, v), dout)
    return o.detach(), dq, dk, dv


def run_cudnn(q, k, v, dout, scale):
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale
        ).transpose(1, 2)
        dq, dk, dv = torch.autograd.grad(o, (q, k, v), dout)
    return o.detach(), dq, dk, dv


def errs(res, ref):
    return {n: rel(a, b) for n, a, b in zip(("out", "dq", "dk", "dv"), res, ref)}


# ----------------------------------------------------------------------------------------------
class Log:
    def __init__(self, out_dir, variant):
        self.path = os.path.join(out_dir, "results.jsonl")
        self.variant = variant

    def __call__(self, **rec):
        rec = {"variant": self.variant, **rec}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)


def check_dense(log, hd, S, with_cudnn):
    import torch

    t0 = time.time()
    q, k, v, dout = make_inputs(S, HEADS, hd)
    scale = hd**-0.5
    ref = ref_fp64(q, k, v, dout, scale)
    e = errs(run_fa4(q, k, v, dout, scale), ref)
    log(
        kind="acc",
        case="dense",
        impl="fa4",
        hd=hd,
        S=S,
        H=HEADS,
        **e,
        sec=round(time.time() - t0, 1),
    )
    if with_cudnn:
        try:
            log(
                kind="acc",
                case="dense",
                impl="cudnn",
                hd=hd,
                S=S,
                H=HEADS,
                **errs(run_cudnn(q, k, v, dout, scale), ref),
            )
        except Exception as ex:
            log(kind="error", item=f"cudnn acc hd{hd} S{S}", msg=repr(ex)[:300])
    del ref
    torch.cuda.empty_cache()


def check_gqa(log, hd=80, S=1000, Hk=2):
    q, k, v, dout = make_inputs(S, HEADS, hd, Hk=Hk, seed=1)
    scale = hd**-0.5
    e = errs(run_fa4(q, k, v, dout, scale), ref_fp64(q, k, v, dout, scale))
    log(kind="acc", case=f"gqa{HEADS}/{Hk}", impl="fa4", hd=hd, S=S, H=HEADS, **e)


def varlen_inputs(hd, lens=(300, 700, 513)):
    import torch

    g = torch.Generator(device="cuda").manual_seed(7 + hd)
    T = sum(lens)

    def mk():
        return torch.randn(T, HEADS, hd, device="cuda", dtype=torch.bfloat16, generator=g)

    cu = torch.tensor(
        [0, *list(__import__("itertools").accumulate(lens))], device="cuda", dtype=torch.int32
    )
    return mk(), mk(), mk(), mk(), cu, max(lens), lens


def check_varlen(log, hd=72):
    import torch

    q, k, v, dout, cu, mx, lens = varlen_inputs(hd)
    scale = hd**-0.5
    qq, kk, vv = (t.detach().clone().requires_grad_() for t in (q, k, v))
    o = fa4_varlen_call(qq, kk, vv, cu, mx)
    got = (o.detach(), *torch.autograd.grad(o, (qq, kk, vv), dout))
    refs = [[], [], [], []]
    for i, _L in enumerate(lens):
        a, b = int(cu[i]), int(cu[i + 1])
        r = ref_fp64(*(t[None, a:b] for t in (q, k, v, dout)), scale)
        for j in range(4):
            refs[j].append(r[j][0])
    ref = [torch.cat(r) for r in refs]
    log(
        kind="acc",
        case="varlen" + "+".join(map(str, lens)),
        impl="fa4",
        hd=hd,
        S=sum(lens),
        H=HEADS,
        **errs(got, ref),
    )


def bench(fn, iters=10, warmup=3):
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    evs = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        evs.append((s, e))
    torch.cuda.synchronize()
    ts = sorted(s.elapsed_time(e) for s, e in evs)
    return ts[len(ts) // 2]


def time_one(log, impl, hd, S=12880, H=24):
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v, dout = make_inputs(S, H, hd, seed=3)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    scale = hd**-0.5
    if impl == "fa4":

        def f():
            return fa4_call(q, k, v, softmax_scale=scale)

        ctx = None
    else:

        def f():
            return F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale
            ).transpose(1, 2)

        ctx = sdpa_kernel([SDPBackend.CUDNN_ATTENTION])

    def fb():
        return torch.autograd.grad(f(), (q, k, v), dout)

    if ctx is not None:
        ctx.__enter__()
    try:
        fwd = bench(f)
        fwdbwd = bench(fb)
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)
    flop_f = 4 * S * S * H * hd
    log(
        kind="time",
        impl=impl,
        hd=hd,
        S=S,
        H=H,
        fwd_ms=round(fwd, 3),
        fwdbwd_ms=round(fwdbwd, 3),
        fwd_tflops=round(flop_f / fwd / 1e9, 1),
        fwdbwd_tflops=round(3.5 * flop_f / fwdbwd / 1e9, 1),
    )


def cmd_check(a):
    import torch

    log = Log(a.out, a.variant)
    apply_variant(a.variant)
    import flash_attn.cute  # noqa: F401

    items = []
    if a.variant == "kernel32":
        items += [("dense", hd, 1000) for hd in (72, 80)]
    else:
        cud = a.variant == "patched"
        items += [("dense", hd, 1000, cud) for hd in (72, 80)]
        items += [("dense", hd, 12880, cud) for hd in (72, 80)]
        if a.variant == "patched":
            items += [("time", impl, hd) for hd in (72, 80, 96) for impl in ("fa4", "cudnn")]
        items += [("dense", hd, S, cud) for S in SEQS for hd in (64, 88, 96, 128)]
        items += [("gqa",), ("varlen",), ("dense", 48, 1000, False)]
    for it in items:
        if time.time() > a.deadline:
            log(kind="skipped", item=str(it), msg="deadline")
            continue
        try:
            if it[0] == "dense":
                check_dense(log, it[1], it[2], it[3] if len(it) > 3 else False)
            elif it[0] == "time":
                time_one(log, it[1], it[2])
            elif it[0] == "gqa":
                check_gqa(log)
            elif it[0] == "varlen":
                check_varlen(log)
        except Exception as ex:
            log(kind="error", item=str(it), msg=(type(ex).__name__ + ": " + str(ex))[:600])
        torch.cuda.empty_cache()


def cmd_warm(a):
    """Compile unpatched and patched kernels for one case into the persistent JIT cache."""
    import torch

    t0 = time.time()
    import flash_attn.cute  # noqa: F401

    def once():
        if a.varlen:
            q, k, v, dout, cu, mx, _ = varlen_inputs(a.hd)
            q, k, v = (t.requires_grad_() for t in (q, k, v))
            torch.autograd.grad(fa4_varlen_call(q, k, v, cu, mx), (q, k, v), dout)
        else:
            q, k, v, dout = make_inputs(1000, HEADS if a.gqa else 2, a.hd, Hk=2 if a.gqa else None)
            run_fa4(q, k, v, dout, a.hd**-0.5)
        torch.cuda.synchronize()

    msgs = []
    for variant in ("none", "patched"):
        t1 = time.time()
        try:
            apply_variant(variant)
            once()
            msgs.append(f"{variant} ok {time.time() - t1:.1f}s")
        except Exception as ex:
            msgs.append(f"{variant} FAILED {type(ex).__name__}: {str(ex)[:300]}")
    print(
        f"warm hd={a.hd} gqa={a.gqa} varlen={a.varlen}: "
        + "; ".join(msgs)
        + f"; total {time.time() - t0:.1f}s",
        flush=True,
    )


# ----------------------------------------------------------------------------------------------
def render(out_dir):
    recs = [json.loads(line) for line in open(os.path.join(out_dir, "results.jsonl"))]
    lines = [
        "| variant | case | impl | hd | S | out | dq | dk | dv |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in recs:
        if r.get("kind") == "acc":
            lines.append(
                f"| {r['variant']} | {r['case']} | {r['impl']} | {r['hd']} | {r['S']} | "
                + " | ".join(f"{r[n]:.2e}" for n in ("out", "dq", "dk", "dv"))
                + " |"
            )
    lines += [
        "",
        "| impl | hd | S x H | fwd ms | fwd+bwd ms | fwd TFLOP/s | fwd+bwd TFLOP/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in recs:
        if r.get("kind") == "time":
            label = r["impl"] if r["impl"] == "cudnn" else f"{r['impl']} ({r['variant']})"
            lines.append(
                f"| {label} | {r['hd']} | {r['S']} x {r['H']} | {r['fwd_ms']} | "
                f"{r['fwdbwd_ms']} | {r['fwd_tflops']} | {r['fwdbwd_tflops']} |"
            )
    other = [r for r in recs if r.get("kind") in ("error", "skipped")]
    if other:
        lines += ["", "Errors / skipped:"] + [
            f"- {r['variant']} {r['item']}: {r['msg']}" for r in other
        ]
    txt = "\n".join(lines) + "\n"
    open(os.path.join(out_dir, "table.md"), "w").write(txt)
    print(txt, flush=True)
    return recs


def cmd_driver(a):
    t_start = time.time()
    os.makedirs(a.out, exist_ok=True)
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED="1",
        FLASH_ATTENTION_CUTE_DSL_CACHE_DIR="/tmp/fa4cache",
    )
    me = [sys.executable, os.path.abspath(__file__)]
    info = subprocess.run(
        [
            sys.executable,
            "-c",
            "import torch, importlib.metadata as m, datetime;"
            "print(torch.cuda.get_device_name(), '| torch', torch.__version__, '| cudnn',"
            " torch.backends.cudnn.version(), '| flash-attn-4', m.version('flash-attn-4'),"
            " '| nvidia-cutlass-dsl', m.version('nvidia-cutlass-dsl'), '|',"
            " datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'))",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    print("device:", info.stdout.strip(), info.stderr[-500:], flush=True)
    open(os.path.join(a.out, "device.txt"), "w").write(info.stdout + info.stderr[-2000:])

    # 1. warm the JIT cache in parallel (compile is CPU-bound, one case per process)
    warm_log = open(os.path.join(a.out, "warm.log"), "w")
    specs = [["--hd", str(h)] for h in (72, 80, 96, 64, 88, 128, 48)]
    specs += [["--hd", "80", "--gqa"], ["--hd", "72", "--varlen"]]
    procs = [
        subprocess.Popen([*me, "warm", *s], stdout=warm_log, stderr=subprocess.STDOUT, env=env)
        for s in specs
    ]
    warm_deadline = t_start + a.warm_cap
    for p in procs:
        try:
            p.wait(timeout=max(1, warm_deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
    warm_log.close()
    print(f"warm phase done at {time.time() - t_start:.0f}s", flush=True)
    os.system(f"grep '^warm' {os.path.join(a.out, 'warm.log')}")

    # 2. each variant in a fresh process, most important first
    child_log = open(os.path.join(a.out, "children.log"), "a")
    end = t_start + a.budget

    def child(variant, share):
        remaining = end - time.time()
        if remaining < 20:
            print(f"no time left for {variant}", flush=True)
            return
        dl = time.time() + share * remaining
        e = dict(env)
        if variant == "kernel32":  # kernel changes are not in the compile key: own cache
            e["FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"] = "/tmp/fa4cache_k32"
        p = subprocess.Popen(
            [*me, "check", "--variant", variant, "--out", a.out, "--deadline", str(dl)],
            stdout=child_log,
            stderr=subprocess.STDOUT,
            env=e,
        )
        try:
            p.wait(timeout=max(5, dl - time.time() + 60))
        except subprocess.TimeoutExpired:
            p.kill()
            print(f"{variant}: killed at its deadline", flush=True)
        print(f"{variant} done at {time.time() - t_start:.0f}s (rc {p.returncode})", flush=True)

    child("patched", 0.6)
    child("none", 0.85)
    recs = [json.loads(line) for line in open(os.path.join(a.out, "results.jsonl"))]
    ok = [
        r
        for r in recs
        if r.get("variant") == "patched"
        and r.get("kind") == "acc"
        and r["hd"] in (72, 80)
        and r["case"] == "dense"
        and r["impl"] == "fa4"
        and r["dq"] < 1e-2
    ]
    if len(ok) < 2:
        child("kernel32", 1.0)
    child_log.close()
    render(a.out)
    print(f"total {time.time() - t_start:.0f}s", flush=True)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("driver")
    d.add_argument("--out", required=True)
    d.add_argument("--budget", type=float, default=230)
    d.add_argument("--warm-cap", type=float, default=110)
    c = sub.add_parser("check")
    c.add_argument("--variant", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--deadline", type=float, required=True)
    w = sub.add_parser("warm")
    w.add_argument("--hd", type=int, required=True)
    w.add_argument("--gqa", action="store_true")
    w.add_argument("--varlen", action="store_true")
    a = ap.parse_args()
    {"driver": cmd_driver, "check": cmd_check, "warm": cmd_warm}[a.cmd](a)


if __name__ == "__main__":
    main()
