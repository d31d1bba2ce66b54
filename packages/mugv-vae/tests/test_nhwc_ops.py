"""The VAE's channels-last fused ops (mugv_vae.model.nhwc_ops; GN+SiLU and bias+residual run
mugv_kernels): CPU interpreter parity against float64 torch and against the plain model, and
an sm_90 compile of the VAE's own kernel (phase interleave)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mugv_vae.model import nhwc_ops

triton = pytest.importorskip("triton")


def test_kernels_match_torch_under_the_interpreter():
    script = Path(__file__).with_name("_nhwc_interpret.py")
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    errors = json.loads(out.stdout.strip().splitlines()[-1])
    for name, err in errors.items():
        limit = 1e-3 if name in ("encode", "decode") else 5e-5
        assert err < limit, (name, err)


def test_kernels_are_skipped_where_they_do_not_apply():
    x = torch.randn(2, 16, 4, 4).contiguous(memory_format=torch.channels_last)
    assert not nhwc_ops.kernels_apply(x, 4)  # CPU tensor (no interpreter in this process)
    assert nhwc_ops.as_nsc(torch.randn(2, 16, 4, 4)) is None  # channels-first
    norm = torch.nn.GroupNorm(4, 16)
    bias = torch.randn(16)
    with torch.no_grad():
        torch.testing.assert_close(
            nhwc_ops.group_norm_silu_nhwc(x, norm, bias),
            torch.nn.functional.silu(norm(x + bias.view(1, -1, 1, 1))),
        )


@pytest.mark.parametrize("channels", [128, 256, 512])
def test_kernels_compile_for_hopper(channels):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    def compile_(kernel, sig, consts):
        sig = {**sig, **dict.fromkeys(consts, "constexpr")}
        src = ASTSource(fn=kernel, signature=sig, constexprs=consts)
        opts = {"num_warps": 8, "num_stages": 3}
        assert triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts).asm["cubin"]

    rows = nhwc_ops.TILE_ELEMS // channels  # GN+SiLU / bias+residual: mugv-kernels' tests
    inter_sig = {
        "src_ptr": "*bf16",
        "bias_ptr": "*bf16",
        "out_ptr": "*bf16",
        "H": "i32",
        "W": "i32",
    }
    inter_consts = {"HAS_BIAS": True, "C": channels, "BLOCK_P": rows}
    compile_(nhwc_ops._phase_interleave_kernel, inter_sig, inter_consts)


def test_chunked_attention_matches_sdpa(monkeypatch):
    monkeypatch.setattr(nhwc_ops, "ATTENTION_CHUNK_BYTES", 4 * 50 * 2 * 7)  # 7-query chunks
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 1, 50, 32, generator=g, dtype=torch.float64) for _ in range(3))
    out = nhwc_ops.chunked_attention(q, k, v)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)  # fp32 products on CPU
