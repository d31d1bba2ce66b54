"""mugv-align's sampling and precision (issue 23): a fresh draw per visit with exact resume,
precomputed reference errors on their stored draws and in the policy's dtype, and power EMAs
of the optimizer's fp32 master weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mugv_align.config import load_align_config
from mugv_align.data import ItemVisit, PreferenceSampler, build_batch, draw_seed, load_source
from mugv_align.losses import dpo_margin, per_sample_velocity_error
from mugv_align_fixtures import make_export, make_task_latents, write_config, write_labels
from mugv_dit.config import ObjectiveConfig

OBJ = ObjectiveConfig(task_ratios={"t2v": 1.0, "i2v": 1.0}, caption_dropout=0.5)


@pytest.fixture(scope="module")
def prefs(megatron_single, tmp_path_factory):
    from mugv_align.prefs import make_prefs

    tmp = tmp_path_factory.mktemp("prefs")
    make_task_latents(tmp / "lat", prompts=4, seed=0)
    make_export(tmp / "init", seed=0)
    make_prefs(tmp / "lat", write_labels(tmp / "dpo.jsonl", range(4), "dpo"), tmp / "dpo")
    return tmp


def _sampler(src, seed=7):
    return PreferenceSampler(
        [src], [1.0], items_per_micro_batch=2, micro_batches_per_step=1, seed=seed
    )


def test_each_visit_draws_afresh_and_a_resumed_sampler_draws_the_same(prefs):
    src = load_source(prefs / "dpo", kind="dpo", text_dim=32, channels=4)
    sampler = _sampler(src)
    plans = [sampler.plan(step)[1][0] for step in range(6)]  # 4 items, 2 per step: 3 epochs
    visits = {}
    for mb in plans:
        for v in mb:
            visits.setdefault(v.index, []).append(v.visit)
    assert all(vs == [0, 1, 2] for vs in visits.values()), visits
    # the two visits of item 0: different noise level, noise, (here) task or caption dropout
    first, second = (ItemVisit(0, 0), ItemVisit(0, 1))
    a, b = (build_batch(src, [v], OBJ, 7, "cpu") for v in (first, second))
    assert a.seeds != b.seeds
    assert float(a.sigma_B[0]) != float(b.sigma_B[0])
    noise_a, noise_b = (x.noisy_BCTHW - x.target_BCTHW for x in (a, b))  # not eps, but its
    assert not torch.allclose(noise_a, noise_b)  # noisy - target moves with eps and sigma
    # a pair's winner and loser still share the draw
    assert float(a.sigma_B[0]) == float(a.sigma_B[1])
    # over the 3 epochs every item sees 3 distinct noise levels
    sig = {
        (v.index, v.visit): float(build_batch(src, [v], OBJ, 7, "cpu").sigma_B[0])
        for mb in plans
        for v in mb
    }
    for i in range(4):
        assert len({sig[(i, k)] for k in range(3)}) == 3, sig
    # the draw is a pure function of (data seed, item, visit): a resumed sampler (saved at
    # step 3) plans and draws exactly what the uninterrupted one did
    part = _sampler(src)
    for step in range(3):
        part.plan(step)
    resumed = _sampler(src)
    resumed.load_state_dict(json.loads(json.dumps(part.state_dict())))
    for step in range(3, 6):
        mb = resumed.plan(step)[1][0]
        assert mb == plans[step]
        x, y = (build_batch(src, m, OBJ, 7, "cpu") for m in (mb, plans[step]))
        assert torch.equal(x.noisy_BCTHW, y.noisy_BCTHW) and torch.equal(x.sigma_B, y.sigma_B)
    # seeds: visit 0 keeps the per-item seed, later visits differ, other data seeds differ
    assert draw_seed(7, "a>b", 1) == draw_seed(7, "a>b", 1) != draw_seed(7, "a>b", 2)
    assert draw_seed(7, "a>b", 1) != draw_seed(8, "a>b", 1)
    with pytest.raises(ValueError, match="visit=-1"):
        draw_seed(7, "a>b", -1)


def _dpo_cfg(prefs: Path, tmp: Path, *, steps: int, **align):
    return write_config(
        tmp / "c.yaml",
        tmp / "run",
        steps=steps,
        align={
            "mode": "dpo",
            "preference": [{"path": str(prefs / "dpo")}],
            "beta": 20.0,
            "sft_weight": 0.5,
            "items_per_micro_batch": 2,
            "reference_from": str(prefs / "init"),
            "ema_sigma_rels": [],
            **align,
        },
        train={"init_from": str(prefs / "init")},
    )


def test_precomputed_reference_trains_on_its_stored_draws(prefs, tmp_path):
    """precompute-ref stores each item's draw seed beside its errors; a precomputed run over
    three epochs builds every batch on exactly those draws (the reference's errors recomputed
    on the trainer's batches equal the stored ones), while a live run draws afresh."""
    from mugv_align.reference import precompute_reference_errors
    from mugv_align.trainer import AlignTrainer
    from mugv_dit.interop.export import build_model_from_export
    from mugv_dit.model import PackedText

    ref_file = tmp_path / "ref.json"
    cfg = _dpo_cfg(
        prefs, tmp_path, steps=6, reference="precomputed", reference_errors=str(ref_file)
    )
    assert precompute_reference_errors(load_align_config(cfg), ref_file, device="cpu") == 4
    doc = json.loads(ref_file.read_text())
    assert doc["version"] == 2 and doc["dtype"] == "float32"
    assert doc["draw_seeds"] == {k: draw_seed(7, k, 0) for k in doc["errors"]}

    reference = build_model_from_export(prefs / "init").eval()
    seen = []
    trainer = AlignTrainer(load_align_config(cfg), micro_batches_per_step=1)
    original = trainer._set_reference_errors

    def check(batches):
        original(batches)
        for b in batches:
            assert b.seeds == [doc["draw_seeds"][i] for i in b.ids]
            with torch.no_grad():
                pred = reference(
                    b.noisy_BCTHW,
                    b.sigma_B,
                    PackedText.from_list(b.texts),
                    fps_B=b.fps_B,
                    noisy_frames_BT=b.noisy_frames_BT,
                    drop_caption_B=b.drop_caption_B,
                )
            e = per_sample_velocity_error(pred, b.target_BCTHW, b.noisy_frames_BT)
            torch.testing.assert_close(e, b.ref_error_B, rtol=1e-5, atol=1e-7)
            seen.extend(b.ids)

    trainer._set_reference_errors = check
    try:
        logs = trainer.run()
    finally:
        trainer.close()
    assert len(seen) == 12 and len(set(seen)) == 4  # three visits of each item
    assert logs[0]["mean_error_gap"] == pytest.approx(0.0, abs=1e-6)
    assert "implicit_kl" not in logs[0]

    # the file is checked against the run: its draws' seed, its dtype, complete draw seeds
    from mugv_align.reference import read_reference_errors

    obj = load_align_config(cfg).objective.model_dump(mode="json")
    with pytest.raises(ValueError, match="computed in float32, the policy trains in bfloat16"):
        read_reference_errors(ref_file, data_seed=7, objective=obj, dtype=torch.bfloat16)
    for name, edit, msg in (
        ("v1.json", lambda d: d.update(version=1), "version 1"),
        ("noseed.json", lambda d: d["draw_seeds"].popitem(), "no draw seed stored"),
        ("nodtype.json", lambda d: d.pop("dtype"), "not a reference-errors file"),
    ):
        bad = json.loads(ref_file.read_text())
        edit(bad)
        (tmp_path / name).write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=msg):
            read_reference_errors(tmp_path / name, data_seed=7, objective=obj, dtype=torch.float32)


def test_precomputed_bf16_reference_gives_zero_margins_at_step_0(prefs, tmp_path):
    """With the policy equal to the reference and training in bf16, the reference errors
    precomputed in the policy's dtype give DPO margins of exactly 0 (one pair per forward,
    as precompute-ref runs); errors computed in fp32 (the old behaviour) do not."""
    from mugv_align.reference import precompute_reference_errors, read_reference_errors
    from mugv_dit.interop.export import build_model_from_export
    from mugv_dit.megatron_patches.cuda_on_cpu import cpu_megatron
    from mugv_dit.model import PackedText

    cfg_path = _dpo_cfg(prefs, tmp_path, steps=1)
    cfg = load_align_config(cfg_path)
    files = {}
    for dtype in (torch.bfloat16, torch.float32):
        files[dtype] = tmp_path / f"{dtype}.json"
        precompute_reference_errors(cfg, files[dtype], device="cpu", dtype=dtype)
    obj = cfg.objective.model_dump(mode="json")
    stored = read_reference_errors(files[torch.bfloat16], data_seed=7, objective=obj,
                                   dtype=torch.bfloat16)  # fmt: skip
    fp32 = read_reference_errors(files[torch.float32], data_seed=7, objective=obj,
                                 dtype=torch.float32)  # fmt: skip
    src = load_source(prefs / "dpo", kind="dpo", text_dim=32, channels=4)
    with cpu_megatron():
        policy = build_model_from_export(prefs / "init", dtype=torch.bfloat16).eval()
    margins_bf16, margins_fp32 = [], []
    for n in range(len(src.items)):
        b = build_batch(src, [ItemVisit(n, 0)], cfg.objective, 7, "cpu",
                        fixed_seeds=stored.draw_seeds)  # fmt: skip
        with torch.no_grad():
            pred = policy(
                b.noisy_BCTHW,
                b.sigma_B,
                PackedText.from_list(b.texts),
                fps_B=b.fps_B,
                noisy_frames_BT=b.noisy_frames_BT,
                drop_caption_B=b.drop_caption_B,
            )
        assert next(policy.parameters()).dtype == torch.bfloat16
        e = per_sample_velocity_error(pred, b.target_BCTHW, b.noisy_frames_BT)
        for ref, out in ((stored, margins_bf16), (fp32, margins_fp32)):
            r = torch.tensor(ref.errors[b.ids[0]])
            out.append(float(dpo_margin(e[:1], e[1:], r[:1], r[1:], 20.0)[0]))
    assert margins_bf16 == [0.0] * len(src.items)
    assert any(abs(m) > 1e-4 for m in margins_fp32), margins_fp32  # the defect, for scale


def _bf16_megatron(distributed: bool):
    """A debug DiT in bf16 under Megatron DDP and Adam with fp32 main params (distributed or
    not), as mugv-dit's trainer builds them."""
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
def test_power_emas_average_the_fp32_master_weights(megatron_single, distributed):
    """Adam steps of lr 1e-6 move each weight by ~1e-6, far below half a bf16 ulp of an
    O(0.01) weight (~3e-5): the bf16 params stay put while the fp32 main params move. The
    power EMA follows the main params (float64 brute force of the power profile over the
    main-param trajectory); an EMA of the bf16 params would not have moved at all."""
    from mugv_align.ema import discrete_profile
    from mugv_align.snapshots import PowerEMAs
    from mugv_dit import build_model
    from mugv_dit.config import model_preset
    from mugv_dit.megatron_patches.cuda_on_cpu import cpu_megatron
    from mugv_dit.optim.master import master_params

    with cpu_megatron():
        model, _ddp, opt = _bf16_megatron(distributed)
        emas = PowerEMAs(lambda: build_model(model_preset("debug")), [0.10])
        emas.copy_from(model)
        start = [p.detach().float().clone() for p in model.parameters()]
        trajectory = []
        g = torch.Generator().manual_seed(1)
        for t in range(1, 6):
            opt.zero_grad()
            for p in model.parameters():
                p.main_grad.copy_(torch.randn(p.shape, generator=g))
            ok, *_ = opt.step()
            assert ok
            emas.update(model, t, optimizer=opt)
            trajectory.append([m.main.double().clone() for m in master_params(model, opt)])
    bf16_moved = sum(int((p.float() != s).sum()) for p, s in zip(model.parameters(), start))
    total = sum(p.numel() for p in model.parameters())
    assert bf16_moved < 0.05 * total  # the bf16 weights barely change ...
    main_moved = sum(
        int((m.double().view(-1) != s.double().view(-1)).sum())
        for m, s in zip(trajectory[-1], start)
    )
    assert main_moved > 0.9 * total  # ... the fp32 masters all do
    w = discrete_profile(5, emas.gammas[0])
    for i, p_ema in enumerate(emas.emas[0].parameters()):
        want = sum(float(w[t]) * trajectory[t][i].view_as(p_ema) for t in range(5))
        torch.testing.assert_close(p_ema.double(), want, rtol=2e-7, atol=1e-8)
    ema_moved = sum(int((p.float() != s).sum()) for p, s in zip(emas.emas[0].parameters(), start))
    assert ema_moved > 0.9 * total
