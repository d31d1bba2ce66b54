"""The trainer's EMA averages the optimizer's fp32 master weights (mugv_dit.optim.master), not
the bf16 model weights; the sharded update of the distributed optimizer is made whole by one
sum-reduce; the policy's dtype rule is one public function."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch


def _bf16_megatron(distributed: bool):
    """A debug DiT in bf16 under Megatron DDP and Adam with fp32 main params (distributed or
    not), as the trainer builds them; lr 1e-6 moves a weight ~1e-6 per step, far below half
    a bf16 ulp of an O(0.01) weight (~3e-5)."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from mugv_dit import build_model
    from mugv_dit.config import model_preset

    torch.manual_seed(0)
    model = build_model(model_preset("debug"), dtype=torch.bfloat16)
    ddp = DistributedDataParallel(
        model.config,
        DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, use_distributed_optimizer=distributed, bucket_size=4096
        ),
        model,
    )
    opt = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=1e-6,
            weight_decay=0.0,
            bf16=True,
            params_dtype=torch.bfloat16,
            use_distributed_optimizer=distributed,
            clip_grad=0.0,
        ),
        [ddp],
    )
    return model, ddp, opt


@pytest.mark.parametrize("distributed", [True, False])
def test_trainer_ema_averages_the_fp32_master_weights(megatron_single, distributed):
    """Trainer.update_ema (then Trainer.sync_ema, as Trainer.save calls it) on a bf16 model
    whose Adam updates do not change its bf16 weights: the EMA follows
    ema = d*ema + (1-d)*master computed here in float64 from the masters the optimizer
    holds; an EMA of the bf16 weights (the former rule) would have stayed put."""
    from mugv_dit import build_model
    from mugv_dit.config import model_preset
    from mugv_dit.megatron_patches.cuda_on_cpu import cpu_megatron
    from mugv_dit.trainer import Trainer

    decay = 0.8
    with cpu_megatron():
        model, ddp, opt = _bf16_megatron(distributed)
        ema = build_model(model_preset("debug")).requires_grad_(False)
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
                p_ema.copy_(p.float())  # as Trainer._build_ema
        trainer = SimpleNamespace(
            cfg=SimpleNamespace(train=SimpleNamespace(ema_decay=decay)),
            model=ddp,
            optimizer=opt,
            ema=ema,
            ema_pending={},
        )
        start = [p.detach().double().clone() for p in model.parameters()]
        want = [s.clone() for s in start]  # float64 EMA of the masters, from the formula
        bf16_ema = [s.clone() for s in start]  # float64 EMA of the bf16 weights
        g = torch.Generator().manual_seed(1)
        for _ in range(5):
            opt.zero_grad()
            for p in model.parameters():
                p.main_grad.copy_(torch.randn(p.shape, generator=g))
            ok, *_ = opt.step()
            assert ok
            Trainer.update_ema(trainer)
            # the masters, read from the optimizer's own groups (not through master_params)
            masters = _masters_from_optimizer(model, opt)
            for i, (m, p) in enumerate(zip(masters, model.parameters(), strict=True)):
                want[i] = decay * want[i] + (1 - decay) * m.view_as(want[i])
                bf16_ema[i] = decay * bf16_ema[i] + (1 - decay) * p.detach().double()
        assert bool(trainer.ema_pending) == distributed  # shard-wise updates noted ...
        Trainer.sync_ema(trainer)
        assert trainer.ema_pending == {}  # ... and synced (one rank: nothing to reduce)
    total = sum(p.numel() for p in model.parameters())
    bf16_moved = sum(int((p.double() != s).sum()) for p, s in zip(model.parameters(), start))
    assert bf16_moved < 0.1 * total  # the bf16 weights barely change (~5%: the tiniest)

    def moved(x, s):  # beyond float64 rounding of the formula (d*x + (1-d)*x is not x)
        return int((~torch.isclose(x, s, rtol=1e-12, atol=0)).sum())

    old_moved = sum(moved(e, s) for e, s in zip(bf16_ema, start))
    assert old_moved < 0.1 * total  # so an EMA of them would hardly move
    new_moved = 0
    for p_ema, w, s in zip(ema.parameters(), want, start, strict=True):
        assert p_ema.dtype == torch.float32  # fp32 EMA storage
        torch.testing.assert_close(p_ema.double(), w, rtol=1e-6, atol=1e-9)
        new_moved += moved(p_ema.double(), s)
    assert new_moved > 0.9 * total  # the EMA of the masters does


def _masters_from_optimizer(model, opt) -> list[torch.Tensor]:
    """Full float64 masters per parameter of ``model`` from Megatron's optimizer state
    (mixed-precision: fp32_from_float16_groups; distributed, one rank: the shard covers the
    whole parameter)."""
    by_id = {}
    for inner in getattr(opt, "chained_optimizers", None) or [opt]:
        if hasattr(inner, "shard_fp32_from_float16_groups"):
            pairs = zip(inner.model_float16_groups, inner.shard_fp32_from_float16_groups)
        else:
            pairs = zip(inner.float16_groups, inner.fp32_from_float16_groups)
        for mg, fg in pairs:
            for p, main in zip(mg, fg):
                assert main.numel() == p.numel()  # DP=1: this rank holds every element
                by_id[id(p)] = main.detach().double()
    return [by_id[id(p)].view(p.shape) for p in model.parameters()]


def test_sharded_update_and_one_reduce_equal_the_whole_update(tmp_path):
    """Two gloo ranks each update only their shard of the EMA; after sync_sharded_ both hold
    exactly (bit for bit) the EMA a single process gets updating every element."""
    import socket

    import torch.multiprocessing as mp
    from mugv_dit.optim.master import MasterParam, lerp_to_masters_
    from mugv_dit_ema_worker import sync_worker  # by module name: spawned children import it

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = str(tmp_path / "ema")
    mp.start_processes(sync_worker, args=(2, port, path), nprocs=2, start_method="spawn")
    g = torch.Generator().manual_seed(0)
    want = [torch.randn(5, 7, generator=g), torch.randn(11, generator=g)]
    master = [torch.randn(5, 7, generator=g), torch.randn(11, generator=g)]
    for _ in range(3):
        lerp_to_masters_(want, [MasterParam(m) for m in master], 0.25, {})
    for rank in range(2):
        got = torch.load(f"{path}.{rank}")
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)


def test_one_dtype_rule_for_trainer_and_align():
    from mugv_dit.optim.master import compute_dtype

    assert compute_dtype(True, "cuda") == torch.bfloat16
    assert compute_dtype(True, torch.device("cuda", 1)) == torch.bfloat16
    assert compute_dtype(False, "cuda") == torch.float32
    assert compute_dtype(True, "cpu") == torch.float32
