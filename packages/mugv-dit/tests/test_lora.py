"""LoRA on MUG-DiT (mugv_dit.lora): adapters on the parallel linears, training through the
trainer, merge, peft files; TP=2 (with / without SP) and DP=2 equal to TP=1 over gloo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from mugv_dit_fixtures import make_latent_dataset

LORA = {"rank": 4, "alpha": 8.0}
STAGES = [{"name": "main", "steps": 4, "lr": 3e-3}]


def _inputs(dtype=torch.float64, seed=0):
    from mugv_dit.model import PackedText

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 24, 3, 4, 4, dtype=dtype, generator=g)
    sigma = torch.rand(2, dtype=dtype, generator=g)
    text = PackedText.from_list([torch.randn(n, 32, dtype=dtype, generator=g) for n in (3, 5)])
    return x, sigma, text, torch.full((2,), 24.0, dtype=dtype)


def _run(model, inputs):
    x, sigma, text, fps = inputs
    return model(x, sigma, text, fps_B=fps)


def _randomise_b(model, std=0.1, seed=1):
    from mugv_dit.lora.adapters import lora_parameters

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(lora_parameters(model).items()):
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


def test_zero_b_is_the_base_and_adapters_off_is_the_base(megatron_single, debug_cfg):
    from mugv_dit import build_model
    from mugv_dit.lora import LoraConfig
    from mugv_dit.lora.adapters import adapters_enabled, apply_lora

    torch.manual_seed(0)
    model = build_model(debug_cfg, dtype=torch.float64).eval()
    inputs = _inputs()
    base = _run(model, inputs)
    names = apply_lora(model, LoraConfig(**LORA))
    assert len(names) == 7 * debug_cfg.num_layers
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".lora_A", ".lora_B")) for n in trainable)
    assert torch.equal(_run(model, inputs), base)  # B = 0: exactly the base
    _randomise_b(model)
    adapted = _run(model, inputs)
    assert (adapted - base).abs().max() > 1e-3
    with adapters_enabled(model, False):
        assert torch.equal(_run(model, inputs), base)
    assert torch.equal(_run(model, inputs), adapted)


def test_merged_weights_equal_the_adapted_model_float64(megatron_single, debug_cfg):
    """W + alpha/r B A (the export's merge) gives the adapted model's output to 1e-12, and
    is checked against an independent float64 evaluation of one linear."""
    from mugv_dit import build_model
    from mugv_dit.interop.export import full_state_dict, load_full_state_dict
    from mugv_dit.lora import LoraConfig
    from mugv_dit.lora.adapters import apply_lora
    from mugv_dit.lora.merge import merge_lora_state

    cfg = LoraConfig(rank=3, alpha=5.0, targets=["qkv", "cross_attention.proj", "fc2"])
    torch.manual_seed(0)
    model = build_model(debug_cfg, dtype=torch.float64).eval()
    apply_lora(model, cfg)
    _randomise_b(model)
    inputs = _inputs()
    want = _run(model, inputs)
    state = full_state_dict(model)
    merged = merge_lora_state(state, cfg.scale)
    assert not any("lora" in k for k in merged)
    assert "blocks.0.self_attention.proj.lora_A" not in state  # not a target
    w = state["blocks.1.mlp.fc2.weight"]
    a, b = state["blocks.1.mlp.fc2.lora_A"], state["blocks.1.mlp.fc2.lora_B"]
    x = torch.randn(5, w.shape[1], dtype=torch.float64)
    torch.testing.assert_close(
        x @ merged["blocks.1.mlp.fc2.weight"].T,
        x @ w.T + (5.0 / 3) * ((x @ a.T) @ b.T),
        rtol=0,
        atol=1e-12,
    )
    torch.manual_seed(5)
    plain = build_model(debug_cfg, dtype=torch.float64).eval()
    load_full_state_dict(plain, merged)
    torch.testing.assert_close(_run(plain, inputs), want, rtol=0, atol=1e-12)


def test_targets_are_checked():
    from mugv_dit.lora import LoraConfig

    with pytest.raises(ValueError, match="'attn' matches no block linear"):
        LoraConfig(targets=["attn"])
    assert LoraConfig(targets=["self_attention.proj"]).targets_linear("self_attention.proj")
    assert not LoraConfig(targets=["self_attention.proj"]).targets_linear("cross_attention.proj")


# -- training ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_latent_dataset(tmp_path_factory.mktemp("latents") / "ds")


@pytest.fixture(scope="module")
def base_export(tmp_path_factory):
    from mugv_dit.config import model_preset
    from mugv_dit.interop.export import write_random_export

    out = tmp_path_factory.mktemp("base") / "export"
    return write_random_export(model_preset("debug", text_dim=32), out, seed=7)


def _config(tmp: Path, dataset: Path, base: Path, out: str, **extra) -> Path:
    raw = {
        "preset": "debug",
        "model": {"text_dim": 32},
        "objective": {"task_ratios": {"t2v": 1.0, "i2v": 1.0}, "caption_dropout": 0.3},
        "data": {"path": str(dataset), "tokens_per_batch": 64, "seed": 1231},
        "train": {"progress": False, "ema_decay": 0.9, "init_from": str(base), "save_every": 2},
        "curriculum": STAGES,
        "lora": LORA,
        "output_dir": str(tmp / out),
        **extra,
    }
    path = tmp / f"{out}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def _train(cfg_path: Path, max_steps=None):
    from mugv_dit.config import load_config
    from mugv_dit.trainer import Trainer

    trainer = Trainer(load_config(cfg_path), micro_batches_per_step=2)
    try:
        trainer.run(max_steps=max_steps)
        return trainer
    finally:
        trainer.close()


@pytest.fixture(scope="module")
def lora_run(megatron_single, dataset, base_export, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora")
    trainer = _train(_config(tmp, dataset, base_export, "ref"))
    return tmp / "ref", trainer


def test_lora_training_freezes_the_base_and_resumes_exactly(
    megatron_single, lora_run, dataset, base_export, base_model_state, tmp_path
):
    """Only the adapters carry grads and optimizer state; the base ends bit-identical to the
    export it started from; the adapters moved; a run stopped after step 3 and resumed from
    its step-2 checkpoint repeats the loss curve exactly."""
    from mugv_dit.lora.adapters import lora_parameters

    run_dir, trainer = lora_run
    model = trainer.model.module
    params = dict(model.named_parameters())
    adapters = lora_parameters(model)
    assert set(adapters) == {n for n, p in params.items() if p.requires_grad}
    # the (distributed) optimizer's fp32 main params: the adapters' elements, nothing else
    in_optimizer = sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"])
    assert in_optimizer == sum(p.numel() for p in adapters.values())
    ema = dict(trainer.ema.named_parameters())
    for name, value in base_model_state.items():
        assert torch.equal(params[name].detach(), value), name
        assert torch.equal(ema[name].detach(), value.float()), name  # the EMA's base too
        # the EMA owns only adapters: its base IS the model's (no second copy in memory)
        assert ema[name] is params[name], name
    for name, p in adapters.items():  # its own fp32 adapters, averaged (so not the model's)
        assert ema[name] is not p and ema[name].dtype == torch.float32, name
        if name.endswith("lora_B"):
            assert 0 < (ema[name] - p).abs().max() < p.abs().max(), name
    moved = [n for n, p in adapters.items() if n.endswith("lora_B") and p.abs().max() > 0]
    assert len(moved) == len(adapters) // 2
    losses = _losses(run_dir)
    assert sorted(losses) == [0, 1, 2, 3] and losses[3] < losses[0] * 1.5

    # the checkpoint's EMA slot holds the adapters only (the base is in the model slot once)
    from mugv_dit.checkpoint import read_checkpoint_metadata

    ckpt = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    names = read_checkpoint_metadata(ckpt / ".metadata").state_dict_metadata
    in_ema = {k[len("ema.") :] for k in names if k.startswith("ema.")}
    assert in_ema == set(adapters)
    assert set(base_model_state) <= {k[len("model.") :] for k in names}

    ema_end = {n: p.detach().clone() for n, p in trainer.ema.named_parameters()}
    cfg = _config(tmp_path, dataset, base_export, "resumed")
    _train(cfg, max_steps=3)  # "killed" after step 3; its last checkpoint is step 2
    resumed = _train(cfg)
    assert _losses(tmp_path / "resumed") == losses
    for name, p in resumed.ema.named_parameters():  # the EMA adapters re-attached exactly
        assert torch.equal(p, ema_end[name]), name

    # an old checkpoint whose EMA slot holds a whole model (base included) still resumes
    import mugv_dit.checkpoint as checkpoint

    cfg = _config(tmp_path, dataset, base_export, "old")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoint, "holds_only_adapters", lambda module: False)
        _train(cfg, max_steps=3)
    ckpt = sorted((tmp_path / "old" / "checkpoints").glob("step_*"))[-1]
    names = read_checkpoint_metadata(ckpt / ".metadata").state_dict_metadata
    assert {"ema." + n for n in base_model_state} <= set(names)  # the old layout
    resumed = _train(cfg)
    assert _losses(tmp_path / "old") == losses
    for name, p in resumed.ema.named_parameters():
        assert torch.equal(p, ema_end[name]), name


@pytest.fixture(scope="module")
def base_model_state(base_export):
    from mugv_dit.interop.export import load_export

    _, state = load_export(base_export)
    return state


def test_merge_and_peft_export_of_a_run(
    megatron_single, lora_run, base_model_state, tmp_path, capsys
):
    from mugv_dit.cli import main
    from mugv_dit.interop.export import checkpoint_state, load_export
    from mugv_dit.lora import LoraConfig
    from mugv_dit.lora.merge import merge_lora_state
    from safetensors.torch import load_file

    run_dir, _ = lora_run
    assert main(["export", "--run", str(run_dir), "--output", str(tmp_path / "x")]) == 2
    assert "--merge-lora" in capsys.readouterr().err
    assert (
        main(["export", "--run", str(run_dir), "--output", str(tmp_path / "m"), "--merge-lora"])
        == 0
    )
    assert main(["export-lora", "--run", str(run_dir), "--output", str(tmp_path / "a")]) == 0
    _, merged = load_export(tmp_path / "m")
    ckpt = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    state = checkpoint_state(ckpt, _model_cfg(), weights="ema", lora=LoraConfig(**LORA))
    assert set(merged) == set(base_model_state)
    for k, v in merge_lora_state(state, 2.0).items():
        assert torch.equal(merged[k], v), k
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8.0 and config["peft_type"] == "LORA"
    tensors = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    key = "base_model.model.blocks.1.cross_attention.kv.lora_B.weight"
    assert torch.equal(tensors[key], state["blocks.1.cross_attention.kv.lora_B"])
    assert len(tensors) == 2 * 7 * 2
    import re

    assert re.fullmatch(config["target_modules"], "blocks.1.mlp.fc1")
    assert not re.fullmatch(config["target_modules"], "t_embedder.fc1")


def _model_cfg():
    from mugv_dit.config import model_preset

    return model_preset("debug", text_dim=32)


@pytest.mark.slow
def test_tp2_sp_tp2_and_dp2_lora_match_tp1(lora_run, dataset, base_export, tmp_path):
    """TP=2 with and without sequence parallelism and DP=2 (distributed optimizer): the
    LoRA losses and the trained adapters (their grads through Adam) equal TP=1's."""
    from mugv_dit.interop.export import checkpoint_state
    from mugv_dit.lora import LoraConfig
    from test_train import _run_layouts

    ref_dir, _ = lora_run
    configs = {
        "tp2sp": {"tensor_parallel": 2, "sequence_parallel": True},
        "tp2": {"tensor_parallel": 2},
        "dp2": {"overlap_grad_reduce": True},
    }
    runs = []
    for name, par in configs.items():
        cfg = _config(tmp_path, dataset, base_export, name, parallel=par)
        runs.append({"config": str(cfg), "micro_batches": 2, "max_steps": None})
    _run_layouts(tmp_path, runs)
    ref = _losses(ref_dir)
    ref_ckpt = sorted((ref_dir / "checkpoints").glob("step_*"))[-1]
    want = checkpoint_state(ref_ckpt, _model_cfg(), weights="model", lora=LoraConfig(**LORA))
    for name in configs:
        got = _losses(tmp_path / name)
        assert sorted(got) == sorted(ref)
        for step in got:
            assert got[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-6), (name, step)
        ckpt = sorted((tmp_path / name / "checkpoints").glob("step_*"))[-1]
        state = checkpoint_state(ckpt, _model_cfg(), weights="model", lora=LoraConfig(**LORA))
        for k, v in want.items():
            tol = {"rtol": 1e-4, "atol": 2e-6} if "lora" in k else {"rtol": 0, "atol": 0}
            torch.testing.assert_close(state[k], v, **tol, msg=f"{name}: {k}")
