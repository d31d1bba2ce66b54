"""The sync-free optimizer step against Megatron's own step on the same model and grads, its
grad norm against float64, and its handling of a non-finite grad norm (no update at all)."""

from __future__ import annotations

import math
import sys

import pytest
import torch


def _megatron_pair(clip_grad: float, dtype=torch.bfloat16, device="cpu"):
    """Two identical (DDP, distributed optimizer with fused AdamW) setups over the debug DiT."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from mugv_dit import build_model
    from mugv_dit.config import model_preset
    from mugv_dit.optim.fused_adam import enable_fused_adam

    cfg = model_preset("debug")
    out = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model(cfg, dtype=dtype).to(device)
        tcfg = model.config
        ddp = DistributedDataParallel(
            tcfg,
            DistributedDataParallelConfig(
                grad_reduce_in_fp32=True, use_distributed_optimizer=True, bucket_size=4096
            ),
            model,
        )
        opt = get_megatron_optimizer(
            OptimizerConfig(
                optimizer="adam",
                lr=1e-2,
                weight_decay=0.1,
                adam_beta2=0.95,
                bf16=dtype == torch.bfloat16,
                params_dtype=dtype,
                use_distributed_optimizer=True,
                clip_grad=clip_grad,
            ),
            [ddp],
        )
        assert enable_fused_adam(opt) >= 1
        out.append((model, ddp, opt))
    return out


def _fill_grads(ddp, seed: int, scale: float) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    grads = []
    for p in ddp.module.parameters():
        grad = torch.randn(p.shape, generator=g) * scale
        p.main_grad.copy_(grad)  # to the grad buffer's device
        grads.append(grad.double())
    return grads


PARITY_CASES = [  # (param dtype, clip_grad, grad scale)
    (torch.bfloat16, 1.0, 1.0),  # clipping active (norm >> 1)
    (torch.bfloat16, 1e6, 1e-3),  # clipping inactive
    (torch.float32, 0.0, 1.0),  # no clipping configured, fp32 params
]


@pytest.mark.parametrize(("dtype", "clip_grad", "scale"), PARITY_CASES)
def test_sync_free_step_equals_megatron_step(megatron_single, dtype, clip_grad, scale):
    from mugv_dit.megatron_patches.cuda_on_cpu import cpu_megatron

    with cpu_megatron():
        _check_parity(dtype, clip_grad, scale, "cpu")


def _check_parity(dtype, clip_grad: float, scale: float, device: str) -> None:
    from mugv_dit.optim.sync_free_step import SyncFreeStep, why_not

    (model_a, ddp_a, opt_a), (model_b, ddp_b, opt_b) = _megatron_pair(clip_grad, dtype, device)
    assert why_not(opt_b) is None
    fast = SyncFreeStep(opt_b)
    for step in range(4):
        for opt in (opt_a, opt_b):
            opt.zero_grad()
        grads = _fill_grads(ddp_a, step, scale)
        _fill_grads(ddp_b, step, scale)
        ok_a, norm_a, _ = opt_a.step()
        ok_b, norm_b, zeros = fast.step()
        assert ok_a and ok_b and zeros is None
        assert isinstance(norm_b, torch.Tensor) and norm_b.dim() == 0
        ref = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
        assert float(norm_b) == pytest.approx(ref, rel=1e-5)
        assert float(norm_b) == pytest.approx(norm_a, rel=1e-6)
        # the fp32 main params: Megatron scales the grads by clip / (norm + 1e-6), the
        # fused kernel divides them by (norm + 1e-6) / clip: rounding-level differences
        main_a = [p for g in opt_a.param_groups for p in g["params"]]
        main_b = [p for g in opt_b.param_groups for p in g["params"]]
        for a, b in zip(main_a, main_b):
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
        # the model params are those main params rounded: at most one bf16 ulp apart
        tol = dict(rtol=2**-7, atol=1e-6) if dtype == torch.bfloat16 else dict(rtol=1e-6, atol=1e-7)
        for (name, pa), pb in zip(model_a.named_parameters(), model_b.parameters()):
            torch.testing.assert_close(pb, pa, msg=name, **tol)
    moved = sum(
        float((p.float() - q.float()).abs().sum())
        for p, q in zip(
            model_b.parameters(), _megatron_pair(clip_grad, dtype, device)[0][0].parameters()
        )
    )
    assert moved > 0  # the steps changed the weights


def test_nonfinite_grad_norm_leaves_everything_untouched(megatron_single):
    """A NaN grad: the norm is NaN, and params, fp32 main params, Adam moments and step counts
    stay exactly as they were (Megatron's own step without a loss scaler applies the update)."""
    from mugv_dit.megatron_patches.cuda_on_cpu import cpu_megatron
    from mugv_dit.optim.sync_free_step import SyncFreeStep

    with cpu_megatron():
        (model, ddp, opt), _ = _megatron_pair(1.0)
        fast = SyncFreeStep(opt)
        _fill_grads(ddp, 0, 1.0)
        fast.step()  # one good step: moments exist
        adam = opt.chained_optimizers[0].optimizer
        params = [p.detach().clone() for p in model.parameters()]
        main = [p.detach().clone() for g in adam.param_groups for p in g["params"]]
        state = [
            {k: v.clone() for k, v in adam.state[p].items()}
            for g in adam.param_groups
            for p in g["params"]
        ]
        opt.zero_grad()
        _fill_grads(ddp, 1, 1.0)
        first = next(ddp.module.parameters())
        first.main_grad.view(-1)[3] = float("nan")
        ok, norm, _ = fast.step()
        assert ok and math.isnan(float(norm))
        for p, before in zip(model.parameters(), params):
            torch.testing.assert_close(p, before, rtol=0, atol=0)
        for p, before in zip((p for g in adam.param_groups for p in g["params"]), main):
            torch.testing.assert_close(p, before, rtol=0, atol=0)
        for p, before in zip((p for g in adam.param_groups for p in g["params"]), state):
            for k, v in before.items():
                torch.testing.assert_close(adam.state[p][k], v, rtol=0, atol=0)
        # and the next finite step proceeds (step count 2)
        opt.zero_grad()
        _fill_grads(ddp, 2, 1.0)
        ok, norm, _ = fast.step()
        assert math.isfinite(float(norm))
        p0 = adam.param_groups[0]["params"][0]
        assert float(adam.state[p0]["step"]) == 2


def test_why_not_names_the_unsupported_case(megatron_single):
    from mugv_dit.megatron_patches.cuda_on_cpu import cpu_megatron
    from mugv_dit.optim.sync_free_step import SyncFreeStep, sync_free_step, why_not

    with cpu_megatron():
        (_, _, opt), _ = _megatron_pair(1.0)
        for g in opt.param_groups:
            g["fused"], g["foreach"] = False, True
        adam = opt.chained_optimizers[0].optimizer
        for g in adam.param_groups:
            g["fused"] = False
        assert "not fused" in why_not(opt)
        assert sync_free_step(opt) is None
        with pytest.raises(ValueError, match="not fused"):
            SyncFreeStep(opt)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sync_free_step_equals_megatron_step_on_cuda(tmp_path):
    """The same parity on CUDA, where torch's fused AdamW is a different (CUDA) kernel: run in a
    fresh one-process NCCL group (this file as a script), every case of the CPU test."""
    import os
    import subprocess
    import sys

    dist_vars = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in dist_vars}
    res = subprocess.run(
        [sys.executable, __file__, "cuda-parity"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "cuda parity: 3 cases ok" in res.stdout


if __name__ == "__main__" and sys.argv[1:] == ["cuda-parity"]:
    from mugv_dit.parallel import destroy_distributed, init_distributed

    init_distributed(1, backend="nccl")
    try:
        for case in PARITY_CASES:
            _check_parity(*case, "cuda")
        print(f"cuda parity: {len(PARITY_CASES)} cases ok", flush=True)
    finally:
        destroy_distributed()
