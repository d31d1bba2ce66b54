"""GPU tests (``uv run pytest -m gpu packages/mugv-infer``): FA4 forward against SDPA at head
dim 72, bf16 on CUDA against float32 on CPU, compiled blocks, CPU offload, and (with 2 GPUs)
NCCL sequence / CFG parallelism against one GPU (SP x CFG with 4)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mugv_infer_fixtures import tiny_transformer

pytestmark = pytest.mark.gpu
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
WORKER = Path(__file__).parent / "mugv_infer_parallel_worker.py"


def _rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _inputs(device, dtype=torch.float32, text_dim=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 24, 3, 8, 12, generator=g)
    text = torch.randn(2, 7, text_dim, generator=g)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    s = torch.tensor([0.9, 0.3])
    return x.to(device, dtype), s.to(device), text.to(device, dtype), mask.to(device)


@cuda
def test_fa4_forward_matches_sdpa_at_head_dim_72():
    from mugv_infer.models import MUGDiTTransformer3DModel
    from mugv_kernels.attention import dense_attention, fa4_functions

    if fa4_functions() is None or torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("flash-attn-4 not installed or not a Hopper GPU")
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (
        torch.randn(2, 4096, 24, 72, generator=g, device="cuda", dtype=torch.bfloat16)
        for _ in range(3)
    )
    ref = dense_attention(q.double(), k.double(), v.double(), "sdpa")
    assert _rel(dense_attention(q, k, v, "fa4"), ref) < 1e-2
    assert _rel(dense_attention(q, k, v, "sdpa"), ref) < 1e-2
    model = MUGDiTTransformer3DModel(hidden_size=144, num_heads=2, num_layers=2, text_dim=32)
    model = model.initialize_weights(0).to("cuda", torch.bfloat16).eval()
    x, s, text, mask = _inputs("cuda", torch.bfloat16)
    with torch.no_grad():
        a = model(x, s, text, mask, attention_kwargs={"backend": "fa4"}).sample
        b = model(x, s, text, mask, attention_kwargs={"backend": "sdpa"}).sample
    assert _rel(a, b) < 2e-2


@cuda
def test_fa4_packed_cross_attention_matches_sdpa_at_head_dim_72():
    """FA4's varlen forward on the packed valid text keys against SDPA with the key mask
    (unequal lengths, a hole in the mask), and against float64."""
    from mugv_kernels.attention import PackedText, fa4_functions, masked_cross_attention

    if fa4_functions() is None or torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("flash-attn-4 not installed or not a Hopper GPU")
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, 4096, 24, 72, generator=g, device="cuda", dtype=torch.bfloat16)
    k, v = (
        torch.randn(2, 300, 24, 72, generator=g, device="cuda", dtype=torch.bfloat16)
        for _ in range(2)
    )
    mask = torch.ones(2, 300, dtype=torch.bool, device="cuda")
    mask[1, 120:] = False
    mask[0, 10:20] = False
    ref = masked_cross_attention(q.double(), k.double(), v.double(), mask, "sdpa")
    fa4 = masked_cross_attention(q, k, v, mask, "fa4")
    fa4_packed = masked_cross_attention(q, k, v, mask, "fa4", PackedText.from_mask(mask))
    assert _rel(fa4, ref) < 1e-2
    assert _rel(masked_cross_attention(q, k, v, mask, "sdpa"), ref) < 1e-2
    torch.testing.assert_close(fa4_packed, fa4, rtol=0, atol=0)


@cuda
def _head_dim_72_transformer():
    """Small, but at the real head dim (72): the tiny fixture's head dim 12 sends bf16 SDPA on
    CUDA to its unfused math kernel, which computes the softmax in bf16 (the CPU's upcasts)."""
    from mugv_infer.models import MUGDiTTransformer3DModel

    model = MUGDiTTransformer3DModel(hidden_size=144, num_heads=2, num_layers=2, text_dim=32)
    return model.initialize_weights(0).eval()


def test_bf16_cuda_close_to_float32_cpu():
    """bf16 on CUDA is as close to float32 as bf16 on the CPU is (the tiny model's bf16
    error itself is rounding, larger than a fixed bound can assume)."""
    model = _head_dim_72_transformer()
    with torch.no_grad():
        ref = model(*_inputs("cpu")).sample
        cpu16 = torch.nn.Module.to(_head_dim_72_transformer(), torch.bfloat16)
        err_cpu = _rel(cpu16(*_inputs("cpu", torch.bfloat16)).sample, ref)
        model16 = torch.nn.Module.to(model, "cuda", torch.bfloat16)
        err_cuda = _rel(model16(*_inputs("cuda", torch.bfloat16)).sample.cpu(), ref)
    assert err_cuda <= 1.5 * err_cpu + 5e-3, (err_cuda, err_cpu)


@cuda
def test_compiled_blocks_match_eager():
    from mugv_infer.optimize import compile_blocks

    model = torch.nn.Module.to(tiny_transformer(), "cuda")
    x, s, text, mask = _inputs("cuda")
    with torch.no_grad():
        eager = model(x, s, text, mask).sample
        compile_blocks(model)
        compiled = model(x, s, text, mask).sample
    assert _rel(compiled, eager) < 1e-5


@cuda
def test_fused_kernels_match_plain_on_cuda():
    """bf16 with the fused kernels is as close to the float32 plain model as bf16 plain is."""
    noisy = torch.ones(2, 3, dtype=torch.bool, device="cuda")
    noisy[0, 0] = False
    with torch.no_grad():
        model = torch.nn.Module.to(_head_dim_72_transformer(), "cuda")
        ref = model(*_inputs("cuda"), noisy_frames=noisy).sample
        model = torch.nn.Module.to(model, torch.bfloat16)
        x, s, text, mask = _inputs("cuda", torch.bfloat16)
        plain = model(x, s, text, mask, noisy_frames=noisy).sample
        model.set_fused_ops(True)
        fused = model(x, s, text, mask, noisy_frames=noisy).sample
    err_plain, err_fused = _rel(plain, ref), _rel(fused, ref)
    assert err_fused <= 1.5 * err_plain + 2e-3, (err_fused, err_plain)


@cuda
def test_cpu_offload_on_cuda_equals_resident(parts):
    from mugv_infer import MUGVPipeline

    pipe = MUGVPipeline.from_parts(parts["model"], parts["vae"], parts["t5"])
    pipe.set_progress_bar_config(disable=True)
    lat = torch.randn(pipe.latent_shape(1, 32, 48, 9), generator=torch.Generator().manual_seed(0))
    kw = dict(height=32, width=48, num_frames=9, num_inference_steps=2, output_type="pt")
    pipe.to("cuda")
    resident = pipe("a cat", latents=lat, **kw).frames
    pipe.enable_model_cpu_offload(device="cuda")
    offloaded = pipe("a cat", latents=lat, **kw).frames
    assert pipe.transformer.device.type == "cpu"  # back on the CPU after the call
    torch.testing.assert_close(offloaded, resident, rtol=1e-5, atol=1e-5)


def _gpus(n):
    return pytest.mark.skipif(torch.cuda.device_count() < n, reason=f"needs {n} GPUs")


@pytest.mark.parametrize(
    ("sp", "cfg"),
    [
        pytest.param(2, 1, id="ulysses2", marks=_gpus(2)),
        pytest.param(1, 2, id="cfg2", marks=_gpus(2)),
        pytest.param(2, 2, id="ulysses2xcfg2", marks=_gpus(4)),
    ],
)
def test_several_gpus_match_one(parts, sp, cfg, tmp_path):
    def launch(n, s, c, out):
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0", str(WORKER),
            str(parts["model"]), str(parts["vae"]), str(parts["t5"]), str(s), str(c), str(out),
            "cuda",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=os.environ)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return torch.load(out)

    one = launch(1, 1, 1, tmp_path / "one.pt")
    many = launch(sp * cfg, sp, cfg, tmp_path / "many.pt")
    torch.testing.assert_close(many["latents"], one["latents"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(many["video"], one["video"], rtol=1e-4, atol=1e-4)
