"""End-to-end pre-training on CPU: curriculum, parity across TP/DP layouts, exact resume,
export round-trip."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mugv_dit.config import load_config
from mugv_dit_fixtures import make_latent_dataset

CURRICULUM = [
    {"name": "images", "steps": 2, "lr": 1e-3, "image_share_start": 1.0, "image_share_end": 0.5},
    {"name": "short", "steps": 2, "lr": 1e-3, "max_frames": 17, "lr_decay": "cosine"},
    {
        "name": "long",
        "steps": 2,
        "lr": 5e-4,
        "min_frames": 17,
        "task_ratios": {"i2v": 1.0, "continuation": 1.0},
    },
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_latent_dataset(tmp_path_factory.mktemp("latents") / "ds", energon=True)


def _config(tmp_path: Path, dataset: Path, out: str, **extra) -> Path:
    raw = {
        "preset": "debug",
        "model": {"text_dim": 32},
        "objective": {"task_ratios": {"t2v": 1.0, "i2v": 1.0}, "caption_dropout": 0.3},
        "data": {"path": str(dataset), "tokens_per_batch": 64, "seed": 1231},
        "train": {"progress": False, "ema_decay": 0.9},
        "curriculum": CURRICULUM,
        "output_dir": str(tmp_path / out),
        **extra,
    }
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def _train_inprocess(cfg_path: Path, overrides=(), max_steps=None):
    from mugv_dit.trainer import Trainer

    trainer = Trainer(load_config(cfg_path, list(overrides)), micro_batches_per_step=2)
    try:
        logs = trainer.run(max_steps=max_steps)
        state = trainer.model.module.state_dict()
        trainer.final_state = {
            k: v.detach().clone() for k, v in state.items() if torch.is_tensor(v)
        }
        return logs, trainer.final_state
    finally:
        trainer.close()


@pytest.fixture(scope="module")
def reference_run(megatron_single, dataset, tmp_path_factory):
    """TP=1, DP=1, two accumulated micro-batches per step, checkpoint every 2 steps."""
    tmp = tmp_path_factory.mktemp("ref")
    cfg = _config(tmp, dataset, "ref", train={"progress": False, "ema_decay": 0.9, "save_every": 2})
    logs, final = _train_inprocess(cfg)
    return tmp / "ref", logs, final


def test_curriculum_runs_through_all_stages(reference_run):
    run_dir, logs, _ = reference_run
    assert [log["stage"] for log in logs] == ["images"] * 2 + ["short"] * 2 + ["long"] * 2
    assert all(torch.isfinite(torch.tensor(log["loss"])) for log in logs)
    # stage filters are honoured: "short" only <= 17 frames (T_latent 1 or 3), "long" >= 17
    assert all(log["bucket"][0] in (1, 3) for log in logs[2:4])
    assert all(log["bucket"][0] >= 3 for log in logs[4:6])
    assert logs[0]["lr"] == pytest.approx(1e-3) and logs[4]["lr"] == pytest.approx(5e-4)
    resolved = yaml.safe_load((run_dir / "resolved_config.yaml").read_text())
    assert resolved["model"]["hidden_size"] == 48
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_0000006"
    assert list((run_dir / "tensorboard").iterdir())


def test_tensorboard_off_runs_without_tensorboard(megatron_single, dataset, tmp_path, monkeypatch):
    """``train.tensorboard: false`` trains with tensorboard not importable (the ``train``
    extra absent): metrics.jsonl is written, no tensorboard folder."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    cfg = _config(tmp_path, dataset, "notb", train={"progress": False, "tensorboard": False})
    logs, _ = _train_inprocess(cfg, max_steps=1)
    assert len(logs) == 1 and (tmp_path / "notb" / "metrics.jsonl").is_file()
    assert not (tmp_path / "notb" / "tensorboard").exists()
    on = _config(tmp_path, dataset, "tb", train={"progress": False})
    with pytest.raises(ImportError, match=r"install mugv-dit\[train\]"):
        _train_inprocess(on, max_steps=1)


@pytest.mark.slow  # test_resume_after_sigkill_is_exact covers this with a real kill
def test_resume_after_interruption_is_exact(megatron_single, reference_run, dataset, tmp_path):
    ref_dir, _, _final = reference_run
    cfg = _config(
        tmp_path, dataset, "run", train={"progress": False, "ema_decay": 0.9, "save_every": 2}
    )
    _train_inprocess(cfg, max_steps=3)  # "killed" after step 3; last checkpoint at step 2
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step_0000002"
    _train_inprocess(cfg)
    ref, got = _losses(ref_dir), _losses(tmp_path / "run")
    for step in range(6):
        assert got[step] == ref[step], (step, got[step], ref[step])


@pytest.mark.parametrize(("before", "after"), [(False, True), (True, False)])
def test_resume_keeps_this_runs_adam_kernel(megatron_single, dataset, tmp_path, before, after):
    """Loading a checkpoint restores the param groups' settings, the saved fused/foreach flags
    included: the resumed run must step with the kernel its own train.fused_adam chose (the
    sync-free step needs the fused one), and continue the same loss curve."""
    from mugv_dit.optim.sync_free_step import SyncFreeStep
    from mugv_dit.trainer import Trainer

    train = {"progress": False, "ema_decay": None, "save_every": 2}
    cfg = _config(tmp_path, dataset, "run", train={**train, "fused_adam": before})
    _train_inprocess(cfg, max_steps=2)
    trainer = Trainer(
        load_config(cfg, [f"train.fused_adam={str(after).lower()}"]), micro_batches_per_step=2
    )
    try:
        assert trainer.step == 2  # resumed
        adam = trainer.optimizer.chained_optimizers[0].optimizer
        assert all(bool(g["fused"]) is after for g in adam.param_groups)
        assert isinstance(trainer.stepper, SyncFreeStep) is after
        logs = trainer.run(max_steps=2)  # steps 2 and 3
    finally:
        trainer.close()
    ref = _config(tmp_path, dataset, "ref", train={**train, "fused_adam": after})
    _train_inprocess(ref, max_steps=4)
    got, want = _losses(tmp_path / "run"), _losses(tmp_path / "ref")
    assert [log["step"] for log in logs if "loss" in log] == [2, 3]
    for step in (2, 3):  # fused and foreach AdamW differ by rounding only
        assert got[step] == pytest.approx(want[step], rel=1e-4), step


def test_resume_after_sigkill_is_exact(reference_run, dataset, tmp_path):
    """A real `mugv-dit train` process is SIGKILLed right after its mid-stage checkpoint
    (step 3: inside stage "short") is declared complete; the resumed run continues the
    uninterrupted run's loss curve step for step, and a step directory left by an interrupted
    save is replaced, not mixed into the new checkpoint."""
    ref_dir, _, _ = reference_run
    save3 = {"progress": False, "ema_decay": 0.9, "save_every": 3}
    cfg = _config(tmp_path, dataset, "killed", train=save3)
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    log = (tmp_path / "killed.log").open("w")
    cmd = [sys.executable, "-m", "mugv_dit.cli", "train", str(cfg), "--micro-batches", "2"]
    # a fresh single process: drop the rendezvous variables this pytest process set
    dist_vars = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in dist_vars}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 240
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if latest.is_file() and latest.read_text().strip() == "step_0000003":
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    output = (tmp_path / "killed.log").read_text()[-3000:]
    assert proc.returncode == -signal.SIGKILL, (
        f"not killed mid-run (rc {proc.returncode}): {output}"
    )
    assert latest.read_text().strip() == "step_0000003"
    before = _losses(tmp_path / "killed")
    assert 0 in before and max(before) < 5, before
    # what a kill during the final save would leave: a step directory `latest` never named
    partial = latest.parent / "step_0000006"
    partial.mkdir(exist_ok=True)
    (partial / "__9_9.distcp").write_bytes(b"stale shard of an interrupted save")
    _train_inprocess(cfg)
    assert latest.read_text().strip() == "step_0000006"
    assert not (partial / "__9_9.distcp").exists()  # the new checkpoint started clean
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(6))  # re-run steps once
    ref, got = _losses(ref_dir), _losses(tmp_path / "killed")
    assert sorted(got) == list(range(6))
    for step in range(6):
        assert got[step] == ref[step], (step, got[step], ref[step])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args: str, script: str | None = None, timeout: int = 300, nproc: int = 2) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    entry = [script] if script else ["-m", "mugv_dit.cli"]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-port",
        str(_free_port()),
        *entry,
        *args,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def _resume_from(run_dir: Path, source: Path, step: int) -> None:
    """Seed ``run_dir`` with another run's checkpoint of ``step`` (to resume from)."""
    ckpts = run_dir / "checkpoints"
    ckpts.mkdir(parents=True)
    name = f"step_{step:07d}"
    shutil.copytree(source / "checkpoints" / name, ckpts / name)
    (ckpts / "latest").write_text(name + "\n")


def _run_layouts(tmp: Path, runs: list[dict], nproc: int = 2, timeout: int = 300) -> None:
    """Train several configs in ONE torchrun launch (see mugv_dit_layouts.py)."""
    spec = tmp / "runs.json"
    spec.write_text(json.dumps(runs))
    script = str(Path(__file__).with_name("mugv_dit_layouts.py"))
    _torchrun(str(spec), script=script, nproc=nproc, timeout=timeout)


@pytest.fixture(scope="module")
def layout_runs(reference_run, dataset, tmp_path_factory):
    """Other layouts of the reference run, all in one torchrun launch:

    * tp2: TP=2 + sequence parallel, resuming the TP=1 run's step-2 checkpoint (re-sharded);
    * dp2: DP=2 (distributed optimizer, overlapped grad reduce and param gather) from
      scratch, 3 steps;
    * pp2: PP=2 (1F1B over 2 micro-batches, overlapped grad reduce: no sync until the last
      micro-batch), resuming the TP=1 step-2 checkpoint;
    * cp2: CP=2 (all-to-all sequence parallel), resuming the TP=1 step-2 checkpoint;
    * pp2init: PP=2 starting from the reference's exported weights (`train.init_from`), 1 step.
    """
    from mugv_dit.interop.export import export_run

    ref_dir, _, _ = reference_run
    tmp = tmp_path_factory.mktemp("layouts")
    export_run(ref_dir, tmp / "ref_export", weights="model")
    save2 = {"progress": False, "ema_decay": 0.9, "save_every": 2}
    init = {"progress": False, "ema_decay": 0.9, "init_from": str(tmp / "ref_export")}
    configs = {
        "tp2": _config(
            tmp, dataset, "tp2", parallel={"tensor_parallel": 2, "sequence_parallel": True}
        ),
        "dp2": _config(
            tmp,
            dataset,
            "dp2",
            parallel={"overlap_grad_reduce": True, "overlap_param_gather": True},
        ),
        "pp2": _config(
            tmp,
            dataset,
            "pp2",
            parallel={"pipeline_parallel": 2, "overlap_grad_reduce": True},
            train=save2,
        ),
        "cp2": _config(tmp, dataset, "cp2", parallel={"context_parallel": 2}),
        "pp2init": _config(tmp, dataset, "pp2init", parallel={"pipeline_parallel": 2}, train=init),
    }
    for name in ("tp2", "pp2", "cp2"):
        _resume_from(tmp / name, ref_dir, 2)
    runs = [
        {
            "config": str(configs[name]),
            "micro_batches": 2,
            "max_steps": {"dp2": 3, "pp2init": 1}.get(name),
        }
        for name in configs
    ]
    _run_layouts(tmp, runs)
    return tmp


def _assert_same_weights(run_dir: Path, expected: dict, out: Path) -> None:
    """The run's final raw weights, loaded at TP=PP=CP=1 through export, equal ``expected``."""
    from mugv_dit.interop.export import export_run, load_export

    export_run(run_dir, out, weights="model")
    _, state = load_export(out)
    for name, value in expected.items():
        if not name.endswith("_extra_state"):
            torch.testing.assert_close(state[name], value, rtol=1e-4, atol=2e-6, msg=name)


def test_tp2_from_tp1_checkpoint_and_dp2_match_tp1(reference_run, layout_runs, tmp_path):
    """TP=2 (+ sequence parallel) resumes the TP=1 run's step-2 checkpoint (re-sharded on
    load); DP=2 (distributed optimizer) trains from scratch. Both reproduce the TP=1 losses."""
    ref_dir, ref_logs, final = reference_run
    ref = _losses(ref_dir)
    # an odd token count (29) occurs after step 2: exercises sequence-parallel padding
    assert any(log["bucket"][:3] == [3, 6, 6] for log in ref_logs[2:]), [
        g["bucket"] for g in ref_logs
    ]
    got = _losses(layout_runs / "tp2")
    assert sorted(got) == [2, 3, 4, 5]
    for step in got:
        assert got[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-6), step
    # the TP=2 run's final weights (gathered through export) equal the TP=1 run's, including
    # replicated parameters such as the QK-norm weights that each TP rank sees only partly
    _assert_same_weights(layout_runs / "tp2", final, tmp_path / "tp2_export")
    got = _losses(layout_runs / "dp2")
    assert sorted(got) == [0, 1, 2]
    for step in got:
        assert got[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-6), step


def test_pipeline_parallel_matches_pp1_and_its_checkpoint_resumes_at_pp1(
    megatron_single, reference_run, layout_runs, dataset, tmp_path
):
    """PP=2 (two stages of one block each, conditioning embedders on both, 1F1B over two
    micro-batches) continues the PP=1 run with the same losses and grad norms; its step-4
    checkpoint (saved by two stages) resumes at PP=1 (model, EMA, optimizer) and continues
    the same curve; its final weights equal the PP=1 run's; an export initialises PP=2."""
    ref_dir, ref_logs, final = reference_run
    ref = _losses(ref_dir)
    lines = (layout_runs / "pp2" / "metrics.jsonl").read_text().splitlines()
    got = {r["step"]: r for r in map(json.loads, lines)}
    assert sorted(got) == [2, 3, 4, 5]
    for step in got:
        assert got[step]["loss"] == pytest.approx(ref[step], rel=1e-5, abs=1e-6), step
        # the stage-replicated embedders count once in the (clipped) grad norm
        assert got[step]["grad_norm"] == pytest.approx(ref_logs[step]["grad_norm"], rel=1e-4)
    _assert_same_weights(layout_runs / "pp2", final, tmp_path / "pp2_export")
    cfg = _config(tmp_path, dataset, "pp1", train={"progress": False, "ema_decay": 0.9})
    _resume_from(tmp_path / "pp1", layout_runs / "pp2", 4)
    _train_inprocess(cfg)
    got = _losses(tmp_path / "pp1")
    assert sorted(got) == [4, 5]
    for step in got:
        assert got[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-6), step
    # exported (full, PP=1) weights load into both stages: same first step as at PP=1
    init = {"progress": False, "ema_decay": 0.9, "init_from": str(layout_runs / "ref_export")}
    cfg = _config(tmp_path, dataset, "init1", train=init)
    logs, _ = _train_inprocess(cfg, max_steps=1)
    got = _losses(layout_runs / "pp2init")
    assert got[0] == pytest.approx(logs[0]["loss"], rel=1e-5, abs=1e-6)
    assert got[0] != pytest.approx(ref[0], rel=1e-3)  # trained weights, not the fresh init


def test_context_parallel_matches_cp1(reference_run, layout_runs, tmp_path):
    """CP=2 (tokens sharded, heads exchanged all-to-all around self-attention, padded odd
    token counts, per-shard final layer gathered for the loss) reproduces the CP=1 losses
    and final weights after resuming the CP=1 checkpoint."""
    ref_dir, _, final = reference_run
    ref = _losses(ref_dir)
    got = _losses(layout_runs / "cp2")
    assert sorted(got) == [2, 3, 4, 5]
    for step in got:
        assert got[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-6), step
    _assert_same_weights(layout_runs / "cp2", final, tmp_path / "cp2_export")


@pytest.mark.slow
def test_tp2_without_sequence_parallel_matches_tp1(reference_run, dataset, tmp_path):
    ref_dir, _, _ = reference_run
    cfg = _config(tmp_path, dataset, "tp2", parallel={"tensor_parallel": 2})
    _resume_from(tmp_path / "tp2", ref_dir, 2)
    _torchrun("train", str(cfg), "--micro-batches", "2")
    ref, got = _losses(ref_dir), _losses(tmp_path / "tp2")
    assert sorted(got) == [2, 3, 4, 5]
    for step in got:
        assert got[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-6), step


def test_export_roundtrip(megatron_single, reference_run, tmp_path):
    from mugv_dit.cli import main
    from mugv_dit.interop.export import build_model_from_export, load_export

    ref_dir, _, final = reference_run
    assert (
        main(
            [
                "export",
                "--run",
                str(ref_dir),
                "--output",
                str(tmp_path / "exp"),
                "--weights",
                "model",
            ]
        )
        == 0
    )
    assert main(["export", "--run", str(ref_dir), "--output", str(tmp_path / "ema")]) == 0
    cfg, state = load_export(tmp_path / "exp")
    for k, v in final.items():  # the export holds exactly the trained weights
        if not k.endswith("_extra_state"):
            torch.testing.assert_close(state[k], v, rtol=0, atol=0)
    _, ema_state = load_export(tmp_path / "ema")
    assert cfg.hidden_size == 48 and "blocks.1.mlp.fc2.weight" in state
    # the EMA lags the trained weights
    assert not torch.equal(state["blocks.0.mlp.fc1.weight"], ema_state["blocks.0.mlp.fc1.weight"])
    model = build_model_from_export(tmp_path / "exp")
    for k, v in model.state_dict().items():
        if not k.endswith("_extra_state"):
            torch.testing.assert_close(v, state[k])


def test_missing_text_features_is_a_clear_error(megatron_single, tmp_path):
    from mugv_dit.data.plan import LatentIndex

    ds = make_latent_dataset(tmp_path / "notext", with_text=False)
    with pytest.raises(ValueError, match="embed-text"):
        LatentIndex(ds)


def test_init_from_export_and_widen_cli(megatron_single, reference_run, dataset, tmp_path):
    from mugv_dit.cli import main
    from mugv_dit.interop.export import load_export
    from mugv_dit.trainer import Trainer

    ref_dir, _, _ = reference_run
    assert main(["export", "--run", str(ref_dir), "--output", str(tmp_path / "exp")]) == 0
    _, state = load_export(tmp_path / "exp")
    cfg = _config(
        tmp_path, dataset, "init", train={"progress": False, "init_from": str(tmp_path / "exp")}
    )
    trainer = Trainer(load_config(cfg), micro_batches_per_step=2)
    try:
        for name, p in trainer.model.module.named_parameters():
            torch.testing.assert_close(p.detach(), state[name], rtol=0, atol=0)
        logs = trainer.run(max_steps=1)
        assert logs[0]["step"] == 0 and logs[0]["loss"] < 3.0
    finally:
        trainer.close()
    assert (
        main(["widen", "--input", str(tmp_path / "exp"), "--output", str(tmp_path / "wide")]) == 0
    )
    wide_cfg, wide = load_export(tmp_path / "wide")
    assert wide_cfg.hidden_size == 96 and wide["blocks.0.mlp.fc1.weight"].shape == (384, 96)


def test_init_from_export_that_differs_only_in_runtime_settings(
    megatron_single, reference_run, dataset, tmp_path
):
    """An export made without fused ops (as `import-original` writes) starts a run that uses
    them (as configs/pretrain_2b.yaml does): runtime settings are not the architecture."""
    from mugv_dit.cli import main
    from mugv_dit.interop.export import load_export
    from mugv_dit.trainer import Trainer

    ref_dir, _, _ = reference_run
    assert main(["export", "--run", str(ref_dir), "--output", str(tmp_path / "exp")]) == 0
    _, state = load_export(tmp_path / "exp")
    cfg = _config(
        tmp_path,
        dataset,
        "fused",
        model={"text_dim": 32, "fused_ops": True, "recompute": "full"},
        train={"progress": False, "init_from": str(tmp_path / "exp")},
    )
    trainer = Trainer(load_config(cfg), micro_batches_per_step=2)
    try:
        for name, p in trainer.model.module.named_parameters():
            torch.testing.assert_close(p.detach(), state[name], rtol=0, atol=0)
        assert trainer.model.module.blocks[0].fused_ops
        assert trainer.run(max_steps=1)[0]["loss"] < 3.0
    finally:
        trainer.close()


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_nonfinite_loss_stops_or_skips(megatron_single, dataset, tmp_path, mode):
    from mugv_dit.trainer import NonFiniteError, Trainer

    cfg = _config(
        tmp_path,
        dataset,
        mode,
        train={"progress": False, "nonfinite": mode, "max_skipped_steps": 1},
    )
    trainer = Trainer(load_config(cfg), micro_batches_per_step=2)
    try:
        with torch.no_grad():
            trainer.model.module.x_embedder.weight[0, 0] = float("nan")
        before = trainer.model.module.t_block.weight.detach().clone()
        if mode == "stop":
            with pytest.raises(NonFiniteError, match="non-finite loss.*step 0"):
                trainer.run(max_steps=1)
        else:
            logs = trainer.run(max_steps=1)
            assert logs[0]["skipped"] and "non-finite loss" in logs[0]["reason"]
            torch.testing.assert_close(trainer.model.module.t_block.weight, before)  # no update
            with pytest.raises(NonFiniteError, match="skipped so far: 2"):
                trainer.run(max_steps=1)
    finally:
        trainer.close()


def test_energon_loader_resumes_exactly(megatron_single, dataset, tmp_path):
    """data.loader=energon: bucketed energon batches, loader state saved with the checkpoint."""
    common = {
        "train": {"progress": False, "save_every": 2, "ema_decay": None},
        "data": {"path": str(dataset), "tokens_per_batch": 64, "loader": "energon"},
        "curriculum": [{"name": "a", "steps": 3}, {"name": "b", "steps": 2, "min_frames": 17}],
    }
    full = _config(tmp_path, dataset, "full", **common)
    logs, _ = _train_inprocess(full)
    assert [log["stage"] for log in logs] == ["a"] * 3 + ["b"] * 2
    assert all(log["bucket"][0] >= 3 for log in logs[3:])  # stage filter applied in energon
    part = _config(tmp_path, dataset, "part", **common)
    _train_inprocess(part, max_steps=3)  # checkpoint at step 2 (mid-stage), killed after 3
    assert (
        tmp_path / "part" / "checkpoints" / "step_0000002" / "energon" / "rank_00000.pt"
    ).is_file()
    _train_inprocess(part)
    assert _losses(tmp_path / "part") == _losses(tmp_path / "full")


@pytest.mark.slow
def test_combined_layouts_on_four_ranks_match(reference_run, dataset, tmp_path):
    """TP=2+SP x CP=2, PP=2 x CP=2, PP=2 x DP=2 and PP=2 x TP=2+SP (4 gloo ranks), each
    resuming the TP=1 step-2 checkpoint, reproduce the single-process losses."""
    ref_dir, _, _ = reference_run
    layouts = {
        "tpcp": {"tensor_parallel": 2, "sequence_parallel": True, "context_parallel": 2},
        "ppcp": {"pipeline_parallel": 2, "context_parallel": 2},
        "ppdp": {"pipeline_parallel": 2},
        "pptp": {"pipeline_parallel": 2, "tensor_parallel": 2, "sequence_parallel": True},
    }
    runs = []
    for name, parallel in layouts.items():
        cfg = _config(tmp_path, dataset, name, parallel=parallel)
        _resume_from(tmp_path / name, ref_dir, 2)
        runs.append({"config": str(cfg), "micro_batches": 2})
    _run_layouts(tmp_path, runs, nproc=4, timeout=600)
    ref = _losses(ref_dir)
    for name in layouts:
        got = _losses(tmp_path / name)
        assert sorted(got) == [2, 3, 4, 5], name
        for step in got:
            assert got[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-6), (name, step)


def test_keep_checkpoints_prunes_oldest_never_latest(megatron_single, dataset, tmp_path):
    """``train.keep_checkpoints: 2`` with a checkpoint every step: after each save only the
    newest two complete checkpoints remain, ``latest`` names one of them; an incomplete
    folder (no ``.metadata``) left by a killed save is removed at the next start (issue 23),
    and the pruning neither counts nor removes one; the run still resumes."""
    from mugv_dit.checkpoint import _mark_complete

    train = {"progress": False, "ema_decay": None, "save_every": 1, "keep_checkpoints": 2}
    cfg = _config(tmp_path, dataset, "keep", train=train)
    root = tmp_path / "keep" / "checkpoints"
    root.mkdir(parents=True)
    (root / "step_0000000").mkdir()  # left by a killed save: no .metadata
    _train_inprocess(cfg, max_steps=3)
    names = sorted(p.name for p in root.iterdir() if p.name.startswith("step_"))
    assert names == ["step_0000002", "step_0000003"]  # the partial one went at the start
    assert (root / "latest").read_text().strip() == "step_0000003"
    logs, _ = _train_inprocess(cfg, max_steps=1)  # resumes at step 3
    assert len([log for log in logs if "loss" in log]) == 1  # one step: 3 -> 4
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("step_0")) == [
        "step_0000003",
        "step_0000004",
    ]
    # the folder `latest` names survives even when it is not among the newest; an
    # incomplete folder is not counted by the pruning nor removed by it
    (root / "step_0000000").mkdir()
    (root / "step_0000009").mkdir()
    (root / "step_0000009" / ".metadata").write_bytes(b"")
    _mark_complete(root, root / "step_0000003", keep=1)
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("step_0")) == [
        "step_0000000",
        "step_0000003",
        "step_0000009",
    ]
    assert (root / "latest").read_text().strip() == "step_0000003"
