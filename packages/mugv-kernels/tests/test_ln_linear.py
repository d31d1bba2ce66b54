"""The modulated LayerNorm fused into a linear layer's prologue (issue 29 item 2).

CPU: the Triton kernels under the interpreter (a subprocess, see ``_ln_linear_interpret.py``)
against a float64 reference written from the formula, forward and every gradient. GPU: a
realistic size (12.9k tokens x 1728 -> 3 x 1728, per-branch modulation) against the unfused
bf16 path (Triton modulated LN stored in bf16, then cuBLAS)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mugv_kernels.ln_linear import modulated_ln_linear, modulated_ln_linear_ref

pytest.importorskip("triton")

#: bounds on ||triton - float64|| / ||float64||; bf16: ~2.5 units of bf16 rounding (2**-8)
#: (seen <= 6.2e-3 on the tiny shapes); fp32: fp32 accumulation (seen <= 1.6e-7).
BOUNDS = {"float32": 2e-6, "bfloat16": 1.2e-2}
GRAD_KEYS = {"out", "dx", "dshift", "dscale", "dweight"}


def _interpret(*cases: str) -> dict:
    script = Path(__file__).with_name("_ln_linear_interpret.py")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, str(script), *cases], env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check(results: dict, cases: tuple[str, ...]) -> None:
    assert sorted(results) == sorted(f"{c} {d}" for c in cases for d in BOUNDS)
    for name, errs in results.items():
        bound = BOUNDS[name.rsplit(" ", 1)[-1]]
        assert set(errs) >= GRAD_KEYS, f"{name}: missing {GRAD_KEYS - set(errs)}"
        for key, err in errs.items():
            assert err <= bound, f"{name}: {key} rel. error {err:.2e} > {bound:.0e}"


def test_fused_matches_float64_formula_under_interpreter():
    """Per-branch (with bias; on a residual sum h = x + y whose statistics come from
    residual_ln_stats; and method="recompute") and per-token (no bias, odd sizes) modulation,
    fp32 and bf16."""
    cases = ("branch", "residual", "recompute", "token_nobias")
    results = _interpret(*cases)
    assert "dbias" in results["branch bfloat16"]
    assert "dy" in results["residual float32"]
    _check(results, cases)


@pytest.mark.slow
def test_fused_matches_float64_formula_under_interpreter_per_sample():
    _check(_interpret("sample"), ("sample",))


def test_reference_is_layer_norm_then_linear():
    """The unfused reference (the oracle of the GPU test) against F.layer_norm in float64."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 7, 12, generator=gen, dtype=torch.float64) * 3
    shift, scale = (torch.randn(2, 12, generator=gen, dtype=torch.float64) for _ in range(2))
    w = torch.randn(5, 12, generator=gen, dtype=torch.float64)
    xn = torch.nn.functional.layer_norm(x, (12,), eps=1e-6)
    want = (xn * (1 + scale[:, None]) + shift[:, None]) @ w.T
    got = modulated_ln_linear(x, shift, scale, w, eps=1e-6, use_triton=False)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_bad_shapes_are_named():
    x = torch.randn(1, 4, 8)
    shift = scale = torch.zeros(1, 8)
    with pytest.raises(ValueError, match="weight must have shape"):
        modulated_ln_linear(x, shift, scale, torch.zeros(3, 7), use_triton=False)
    with pytest.raises(ValueError, match="bias must have shape"):
        modulated_ln_linear(x, shift, scale, torch.zeros(3, 8), torch.zeros(4), use_triton=False)
    with pytest.raises(ValueError, match="method must be"):
        modulated_ln_linear(x, shift, scale, torch.zeros(3, 8), method="x", use_triton=False)


@pytest.mark.gpu
@pytest.mark.parametrize("hidden", [1728, 3456])
def test_fused_matches_unfused_bf16_on_gpu(hidden):
    """12.9k tokens (2 samples), per-branch modulation: fused vs Triton modLN + cuBLAS, both
    bf16, compared against float64 of the same inputs (the fused error may not exceed the
    unfused one by more than bf16 rounding) and directly."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    gen = torch.Generator().manual_seed(7)
    b, seq, n_out = 2, 6450, 3 * hidden
    dev = "cuda"
    x = (torch.randn(b, seq, hidden, generator=gen) * 2 + 0.5).to(dev, torch.bfloat16)
    shift = (torch.randn(b, 2, hidden, generator=gen) * 0.3).to(dev, torch.bfloat16)
    scale = (torch.randn(b, 2, hidden, generator=gen) * 0.3).to(dev, torch.bfloat16)
    w = (torch.randn(n_out, hidden, generator=gen) / hidden**0.5).to(dev, torch.bfloat16)
    bias = (torch.randn(n_out, generator=gen) * 0.1).to(dev, torch.bfloat16)
    mask = (torch.rand(b, seq, generator=gen) < 0.2).to(dev)
    dy = torch.randn(b, seq, n_out, generator=gen).to(dev, torch.bfloat16)
    leaves = (x, shift, scale, w, bias)

    def run(fn, dtype, **kw):
        ins = [t.detach().to(dtype).requires_grad_() for t in leaves]
        y = fn(*ins, token_branch=mask, eps=1e-6, **kw)
        return (y, *torch.autograd.grad(y, ins, dy.to(dtype)))

    fused = run(modulated_ln_linear, torch.bfloat16, use_triton=True)
    unfused = run(modulated_ln_linear_ref, torch.bfloat16, use_triton_norm=True)
    exact = run(modulated_ln_linear_ref, torch.float64)
    names = ("out", "dx", "dshift", "dscale", "dweight", "dbias")
    for name, f, u, e in zip(names, fused, unfused, exact):
        err_f = float((f.double() - e).norm() / e.norm())
        err_u = float((u.double() - e).norm() / e.norm())
        err_fu = float((f.double() - u.double()).norm() / u.double().norm())
        print(f"hidden {hidden} {name}: fused {err_f:.2e} unfused {err_u:.2e} f-u {err_fu:.2e}")
        assert err_f <= max(1.5 * err_u, 4e-3), f"{name}: fused {err_f:.2e} vs {err_u:.2e}"
        assert err_fu <= 1.2e-2, f"{name}: fused vs unfused {err_fu:.2e}"


def _compile_ln_linear(which: str, tile: tuple[int, int, int, int, int], dtype: str) -> None:
    """Lower one kernel to sm_90 machine code at the 10b shape (50.4k tokens, 3456 -> 10368)."""
    from mugv_kernels import _triton_ln_linear as kern

    from .test_compile_sm90 import _compile

    m, k, n = 50400, 3456, 3 * 3456
    bm, bn, bk, warps, stages = tile
    tables = {"mean_ptr": "fp32", "rstd_ptr": "fp32", "idx_ptr": "i32", "shift_ptr": dtype,
              "scale_ptr": dtype}  # fmt: skip
    common = {"M": m, "N": n, "K": k, "s_t": k, "PRECISION": "ieee" if dtype == "fp32" else "tf32",
              "UPCAST": False, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP": 8}  # fmt: skip
    if which == "fwd":
        args = {"x_ptr": dtype, "w_ptr": dtype, "bias_ptr": dtype, "out_ptr": dtype, **tables,
                **common, "sx_m": k, "sw_n": k, "so_m": n, "HAS_BIAS": True}  # fmt: skip
        _compile(kern.ln_linear_fwd_kernel, args, warps, stages)
    else:
        args = {"x_ptr": dtype, "dy_ptr": dtype, "dw_ptr": dtype, **tables, **common,
                "sx_m": k, "sdy_m": n, "sdw_n": k}  # fmt: skip
        _compile(kern.ln_linear_dw_kernel, args, warps, stages)


def test_kernels_compile_for_sm90():
    """The interpreter misses compile-time errors: the statistics pass and one bf16 tiling of
    the forward and dW GEMMs lowered for Hopper with triton's own ptxas (no GPU needed)."""
    from mugv_kernels import _triton_ln_linear as kern
    from mugv_kernels.ln_linear import DW_CONFIGS, FWD_CONFIGS

    from .test_compile_sm90 import _compile

    _compile(
        kern.ln_stats_kernel,
        {"x_ptr": "bf16", "y_ptr": "bf16", "h_ptr": "bf16", "mean_ptr": "fp32",
         "rstd_ptr": "fp32", "M": 50400, "K": 3456, "eps": 1e-6, "sx_m": 3456, "sy_m": 3456,
         "sh_m": 3456, "HAS_Y": True, "BLOCK_R": 2, "BLOCK_K": 4096},
        16,
    )  # fmt: skip
    _compile_ln_linear("fwd", FWD_CONFIGS[-1], "bf16")
    _compile_ln_linear("dw", DW_CONFIGS[0], "bf16")


@pytest.mark.slow
def test_every_tiling_compiles_for_sm90():
    from mugv_kernels.ln_linear import DW_CONFIGS, FP32_CONFIGS, FWD_CONFIGS

    for tile in FWD_CONFIGS:
        _compile_ln_linear("fwd", tile, "bf16")
    for tile in DW_CONFIGS:
        _compile_ln_linear("dw", tile, "bf16")
    for which in ("fwd", "dw"):
        _compile_ln_linear(which, FP32_CONFIGS[0], "fp32")
