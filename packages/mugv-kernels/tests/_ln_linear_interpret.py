"""Run under TRITON_INTERPRET=1 (see test_ln_linear.py): the fused modulated-LN linear
(forward and every gradient) against a float64 reference written from the formula
``y = (LN(x) * (1 + scale) + shift) @ W^T + b``, and against the unfused path at the same dtype.
Prints one JSON line ``{case: {"out": err, "d<arg>": err, ..., "unfused_out": err}}``."""

from __future__ import annotations

import json
import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1"

import torch  # noqa: E402
from mugv_kernels.ln_linear import (  # noqa: E402
    modulated_ln_linear,
    modulated_ln_linear_ref,
    residual_ln_stats,
)


def formula(x, shift, scale, w, b, mask, eps):
    """float64 reference from the formula (no library LayerNorm)."""
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    x_hat = (x - mean) / torch.sqrt(var + eps)
    if mask is not None:  # per branch [B, 2, K]: branch 1 where the mask is True
        pick = mask[..., None]
        shift = torch.where(pick, shift[:, 1:2], shift[:, 0:1])
        scale = torch.where(pick, scale[:, 1:2], scale[:, 0:1])
    elif shift.ndim == x.ndim - 1:  # per sample [B, K]
        shift, scale = shift[:, None], scale[:, None]
    y = (x_hat * (1 + scale) + shift) @ w.T
    return y + b if b is not None else y


def rel(a, b):
    return float((a.detach().double() - b.detach()).norm() / b.detach().norm().clamp_min(1e-300))


CASES = {  # name: (B, L, K, N, layout, bias); "residual": x = x0 + y0 via residual_ln_stats
    "branch": (2, 37, 40, 48, "branch", True),
    "residual": (2, 23, 40, 24, "branch", True),
    "recompute": (2, 29, 40, 24, "branch", True),  # method="recompute"
    "sample": (2, 19, 24, 40, "sample", True),
    "token_nobias": (1, 21, 33, 17, "token", False),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
gen = torch.Generator().manual_seed(0)
results: dict[str, dict[str, float]] = {}
selected = sys.argv[1:] or list(CASES)
for name in selected:
    bsz, seq, k, n, layout, has_bias = CASES[name]
    mod_shape = {"branch": (bsz, 2, k), "sample": (bsz, k), "token": (bsz, seq, k)}[layout]
    x = torch.randn(bsz, seq, k, generator=gen) * 2 + 1.5
    shift = torch.randn(mod_shape, generator=gen)
    scale = torch.randn(mod_shape, generator=gen) * 0.5
    w = torch.randn(n, k, generator=gen) / k**0.5
    b = torch.randn(n, generator=gen) if has_bias else None
    mask = torch.rand(bsz, seq, generator=gen) < 0.3 if layout == "branch" else None
    resid = name == "residual"
    y0 = torch.randn(bsz, seq, k, generator=gen) if resid else None
    for dname, dtype in DTYPES.items():
        leaves = [t.to(dtype) for t in (x, shift, scale, w, b, y0) if t is not None]
        ins = [t.clone().requires_grad_() for t in leaves]
        bias = ins[4] if has_bias else None
        stats = None
        h = ins[0]
        if resid:
            h, stats = residual_ln_stats(ins[0], ins[-1], eps=1e-6, use_triton=True)
        method = "recompute" if name == "recompute" else "fused"
        y = modulated_ln_linear(
            h, *ins[1:4], bias, token_branch=mask, eps=1e-6, stats=stats, method=method,
            use_triton=True,
        )  # fmt: skip
        dy = torch.randn(y.shape, generator=gen).to(dtype)
        grads = torch.autograd.grad(y, ins, dy)
        ref_ins = [t.detach().double().requires_grad_() for t in leaves]
        ref_b = ref_ins[4] if has_bias else None
        ref_h = ref_ins[0] + ref_ins[-1] if resid else ref_ins[0]
        y_ref = formula(ref_h, *ref_ins[1:4], ref_b, mask, 1e-6)
        ref_grads = torch.autograd.grad(y_ref, ref_ins, dy.double())
        res = {"out": rel(y, y_ref)}
        names = ("x", "shift", "scale", "weight", "bias", "y")[: len(ins)]
        for arg, g, gr in zip(names, grads, ref_grads):
            res["d" + arg] = rel(g, gr)
        h_unfused = (leaves[0] + leaves[-1]) if resid else leaves[0]
        unfused = modulated_ln_linear_ref(
            h_unfused, *leaves[1:4], leaves[4] if has_bias else None,
            token_branch=mask, eps=1e-6,
        )  # fmt: skip
        res["unfused_out"] = rel(y, unfused.double())
        results[f"{name} {dname}"] = res
print(json.dumps(results))
