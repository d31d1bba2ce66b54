"""LoRA post-training (issue 26): Flow-DPO with adapters on a frozen base whose reference is
the base itself (adapters off, no second model), tested equal to a separate frozen reference;
a tiny LoRA-DPO run learns the synthetic task's held-out preferences."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from mugv_align_fixtures import write_config
from test_train_align import _held_out, _run

LORA = {"rank": 8, "alpha": 16.0}


def _lora_dpo_cfg(
    task, tmp: Path, name: str, *, steps: int, lr: float, train=None, **align
) -> Path:
    root = task["root"]
    return write_config(
        tmp / f"{name}.yaml",
        tmp / name,
        steps=steps,
        lr=lr,
        align={
            "mode": "dpo",
            "preference": [{"path": str(root / "dpo_train")}],
            "beta": 20.0,
            "sft_weight": 0.1,
            "items_per_micro_batch": 4,
            "ema_sigma_rels": [],
            **align,
        },
        train={"init_from": str(root / "init"), **(train or {})},
        lora=LORA,
    )


def _metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


@pytest.mark.parametrize("mode", ["dpo", pytest.param("kto", marks=pytest.mark.slow)])
def test_adapters_off_reference_equals_a_separate_frozen_reference(task, tmp_path, mode):
    """Two steps of LoRA-DPO (LoRA-KTO) with the base as reference (the policy's adapters
    switched off) and with a separate frozen copy of the same export: same losses, margins
    and adapters; no reference model is built in the first run; the base never changes."""
    from mugv_dit.interop.export import load_export

    root = task["root"]
    kind = {"mode": mode, "preference": [{"path": str(root / f"{mode}_train")}]}
    logs, state, _, trainer = _run(_lora_dpo_cfg(task, tmp_path, "off", steps=2, lr=1e-2, **kind))
    assert trainer.reference_is_base and trainer.ref_model is None
    sep_cfg = _lora_dpo_cfg(
        task, tmp_path, "sep", steps=2, lr=1e-2, reference_from=str(root / "init"), **kind
    )
    sep_logs, sep_state, _, sep = _run(sep_cfg)
    assert sep.ref_model is not None and not sep.reference_is_base
    assert logs[0]["reward_margin"] == 0.0  # step 0: policy == base == reference
    for a, b in zip(logs, sep_logs, strict=True):
        names = ("loss", "pref_loss", "reward_margin", "mean_error_gap", "sft_loss")
        keys = [k for k in names if k in a]
        assert len(keys) >= 3
        for k in keys:
            assert a[k] == b[k], (k, a[k], b[k])
    assert logs[1]["reward_margin"] != 0.0  # the adapters moved
    for k, v in sep_state.items():
        assert torch.equal(state[k], v), k
    _, base = load_export(root / "init")
    for k, v in base.items():  # the base is bit-identical after training
        assert torch.equal(state[k], v), k


def test_lora_dpo_raises_held_out_preference_accuracy(task, tmp_path):
    from mugv_dit.lora.merge import merge_lora_state

    logs, state, _, _ = _run(_lora_dpo_cfg(task, tmp_path, "run", steps=10, lr=2e-2))
    assert logs[0]["pref_loss"] == pytest.approx(0.6931471805599453)
    merged = merge_lora_state(
        {k: v for k, v in state.items() if not k.endswith("_extra_state")},
        LORA["alpha"] / LORA["rank"],
    )
    metrics = _held_out(task, "dpo", merged)
    print(logs[0]["pref_loss"], logs[-1]["pref_loss"], metrics)
    assert metrics["accuracy"] >= 0.8, metrics
    assert metrics["margin"] > 0, metrics
    assert logs[-1]["pref_loss"] < logs[0]["pref_loss"]
    # mugv-align export --merge-lora writes exactly these merged weights (the demo's variant)
    from mugv_align.cli import main
    from mugv_dit.interop.export import load_export

    out = tmp_path / "merged"
    assert main(["export", "--run", str(tmp_path / "run"), "--output", str(out)]) == 2
    assert (
        main(["export", "--run", str(tmp_path / "run"), "--output", str(out), "--merge-lora"]) == 0
    )
    _, exported = load_export(out)
    assert set(exported) == set(merged)
    for k, v in merged.items():
        assert torch.equal(exported[k], v), k


def test_a_lora_run_needs_no_reference_export():
    """With lora the live reference is the base itself: no init_from / reference_from is
    needed; without lora a live reference still needs one."""
    from mugv_align.config import resolve_align_config

    raw = {
        "preset": "debug",
        "data": {"path": "lat"},
        "align": {"mode": "dpo", "preference": [{"path": "prefs"}], "ema_sigma_rels": []},
    }
    with pytest.raises(ValueError, match="a live reference needs align.reference_from"):
        resolve_align_config(raw)
    assert resolve_align_config({**raw, "lora": LORA}).lora.rank == LORA["rank"]


def test_power_emas_of_a_lora_run_hold_only_the_adapters(task, tmp_path, capsys):
    """The power EMAs of a LoRA run own only adapter tensors (fp32, averaged): their base is
    the policy's own frozen tensors, not a copy; their snapshots and checkpoint slot hold the
    adapters alone; a run stopped after step 2 resumes them exactly; ema-reconstruct of a
    sigma_rel between the kept ones folds the averaged adapters into the unchanged base, equal
    to a run writing whole-model snapshots / EMA slots (the old layout, still read)."""
    import mugv_align.snapshots as snapshots
    import mugv_dit.checkpoint as checkpoint
    from mugv_align.cli import main
    from mugv_dit.interop.export import load_export
    from mugv_dit.lora.adapters import is_adapter_name
    from safetensors import safe_open

    def cfg(name):
        kw = {"ema_sigma_rels": [0.05, 0.1], "ema_snapshot_every": 1}
        return _lora_dpo_cfg(task, tmp_path, name, steps=3, lr=1e-2, train={"save_every": 1}, **kw)

    def reconstruct(name):
        out = tmp_path / f"rec_{name}"
        argv = ["ema-reconstruct", "--run", str(tmp_path / name), "--sigma-rel", "0.07"]
        assert main([*argv, "--output", str(out)]) == 0
        return load_export(out)[1]

    _, state, ema_end, trainer = _run(cfg("ema"))
    policy = dict(trainer.model.module.named_parameters())
    trainable = {n for n, p in policy.items() if p.requires_grad}
    for ema in trainer.ema.emas:
        own = 0
        for name, p in ema.named_parameters():
            if is_adapter_name(name):
                assert p is not policy[name] and p.dtype == torch.float32, name
                own += p.numel()
            else:
                assert p is policy[name], name  # shared, not copied
        assert own == sum(policy[n].numel() for n in trainable)
        b = next(n for n in policy if n.endswith("mlp.fc1.lora_B"))
        assert (dict(ema.named_parameters())[b] - policy[b]).abs().max() > 0
    files = sorted((tmp_path / "ema" / "ema_snapshots").glob("step_*/sigma_*/*.safetensors"))
    assert len(files) == 3 * 2
    for f in files:  # adapters only: no base tensor on disk
        with safe_open(str(f), framework="pt") as h:
            assert set(h.keys()) == trainable, f
    ckpt = sorted((tmp_path / "ema" / "checkpoints").glob("step_*"))[-1]
    names = checkpoint.read_checkpoint_metadata(ckpt / ".metadata").state_dict_metadata
    assert {k.split(".", 3)[3] for k in names if k.startswith("ema.")} == trainable

    _run(cfg("resumed"), max_steps=2)  # "killed" after its step-2 checkpoint
    _, _, ema, _ = _run(cfg("resumed"))
    assert ema.keys() == ema_end.keys()
    for k, v in ema_end.items():
        assert torch.equal(ema[k], v), k

    with pytest.MonkeyPatch.context() as mp:  # the old layout: whole models on disk
        mp.setattr(snapshots, "holds_only_adapters", lambda module: False)
        mp.setattr(checkpoint, "holds_only_adapters", lambda module: False)
        _run(cfg("old"))
    with safe_open(str(next((tmp_path / "old").glob("ema_snapshots/step_*/sigma_*/*"))), "pt") as h:
        assert set(h.keys()) > trainable

    rec = reconstruct("ema")
    for name in ("resumed", "old"):
        other = reconstruct(name)
        assert other.keys() == rec.keys()
        for k, v in rec.items():
            if name == "resumed":
                assert torch.equal(other[k], v), (name, k)
            else:  # the old layout averaged the base too: sum_i w_i base, fp32 rounding
                torch.testing.assert_close(other[k], v, rtol=1e-5, atol=1e-6, msg=k)
    # whole-model and adapter-only snapshots are never averaged together
    mixed = tmp_path / "mixed"
    shutil.copytree(tmp_path / "ema", mixed)
    shutil.rmtree(mixed / "ema_snapshots" / "step_0000001")
    shutil.copytree(
        tmp_path / "old/ema_snapshots/step_0000001", mixed / "ema_snapshots/step_0000001"
    )
    argv = ["ema-reconstruct", "--run", str(mixed), "--sigma-rel", "0.07", "--output"]
    assert main([*argv, str(tmp_path / "rec_mixed")]) == 2
    assert "mixes whole-model and adapter-only snapshots" in capsys.readouterr().err
    _, base = load_export(task["root"] / "init")
    adapted = {n[: -len(".lora_A")] + ".weight" for n in state if n.endswith(".lora_A")}
    assert adapted and not any(is_adapter_name(k) for k in rec) and rec.keys() == base.keys()
    for k, v in base.items():
        if k in adapted:
            assert not torch.equal(rec[k], v), k  # the averaged adapters folded in
        else:
            assert torch.equal(rec[k], v), k
