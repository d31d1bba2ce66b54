"""End-to-end post-training on CPU: DPO / KTO learn a known preferred direction, SFT with
power EMAs, exact resume, precomputed reference errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mugv_align.config import load_align_config
from mugv_align_fixtures import make_task_latents, write_config


def _run(cfg_path: Path, max_steps=None, **kw):
    from mugv_align.trainer import AlignTrainer

    trainer = AlignTrainer(load_align_config(cfg_path), micro_batches_per_step=kw.get("mb", 2))
    try:
        logs = trainer.run(max_steps=max_steps)
        state = {
            k: v.detach().clone()
            for k, v in trainer.model.module.state_dict().items()
            if torch.is_tensor(v)
        }
        ema = None
        if trainer.ema is not None:
            ema = {
                k: v.detach().clone()
                for k, v in trainer.ema.state_dict().items()
                if torch.is_tensor(v)
            }
        return logs, state, ema, trainer
    finally:
        trainer.close()


def _held_out(task, kind, run_state):
    """Held-out preference accuracy and mean signed gap, computed here independently of the
    package (no mugv_align.data / losses / evaluate): each pair's chosen and rejected latents
    are read from the latent set by key, noised with the test's own draws (a noise level in
    (0.2, 0.8) and a Gaussian noise shared by the pair, the flow path x = (1 - s) x0 + s eps,
    velocity target x0 - eps), both models predict, and the velocity errors are float64 means
    over all elements. A pair counts as learned when the policy lowered the chosen's error
    relative to the reference more than the rejected's: (e_c - e_c_ref) < (e_r - e_r_ref).
    KTO: a pass sample is learned when e < e_ref, a fail sample when e > e_ref."""
    from mugv_dit.data.plan import LatentIndex, collate
    from mugv_dit.interop.export import build_model_from_export, load_full_state_dict
    from mugv_dit.model import PackedText

    root = task["root"]
    ref = build_model_from_export(root / "init").eval()
    pol = build_model_from_export(root / "init").eval()
    load_full_state_dict(
        pol, {k: v for k, v in run_state.items() if not k.endswith("_extra_state")}
    )
    index = LatentIndex(root / "held_lat")
    row = {r.key: i for i, r in enumerate(index.records)}
    rows = [json.loads(x) for x in (root / f"{kind}_h.jsonl").read_text().splitlines()]
    gen = torch.Generator().manual_seed(2024)

    @torch.no_grad()
    def errors(keys, sigma, eps):
        clean = collate([index.load(row[k]) for k in keys], "cpu")
        x0 = clean.latents_BCTHW.double()
        noisy = (1 - sigma) * x0 + sigma * eps
        target = x0 - eps
        out = []
        for model in (pol, ref):
            pred = model(
                noisy.float(),
                torch.full((len(keys),), sigma),
                PackedText.from_list(clean.texts),
                fps_B=clean.fps_B,
                noisy_frames_BT=torch.ones(len(keys), x0.shape[2], dtype=torch.bool),
                drop_caption_B=torch.zeros(len(keys), dtype=torch.bool),
            )
            out.append((pred[:, : x0.shape[1]].double() - target).pow(2).flatten(1).mean(1))
        return out

    scores = []
    for r in rows:
        for _ in range(4):
            sigma = 0.2 + 0.6 * float(torch.rand((), generator=gen))
            eps = torch.randn((1, 4, 1, 4, 4), generator=gen, dtype=torch.float64)
            if kind == "dpo":
                (e_c, e_r), (ref_c, ref_r) = errors([r["chosen"], r["rejected"]], sigma, eps)
                scores.append(float((e_r - ref_r) - (e_c - ref_c)))
            else:
                (e,), (e_ref,) = errors([r["key"]], sigma, eps)
                sign = 1.0 if r["label"] == "pass" else -1.0
                scores.append(sign * float(e_ref - e))
    return {
        "accuracy": sum(x > 0 for x in scores) / len(scores),
        "margin": sum(scores) / len(scores),
    }


def _train_and_score(task, tmp_path, kind):
    root = task["root"]
    align = {
        "mode": kind,
        "preference": [{"path": str(root / f"{kind}_train")}],
        "beta": 20.0,
        "sft_weight": 0.0,
        "items_per_micro_batch": 4,
        "reference_from": str(root / "init"),
        "ema_sigma_rels": [],
    }
    cfg = write_config(
        tmp_path / "c.yaml",
        tmp_path / "run",
        steps=10,
        align=align,
        train={"init_from": str(root / "init")},
    )
    logs, state, _, _ = _run(cfg)
    return logs, _held_out(task, kind, state)


def _check_learned(kind, logs, metrics):
    assert logs[0]["pref_loss"] == pytest.approx(
        0.6931471805599453 if kind == "dpo" else logs[0]["pref_loss"]
    )
    assert metrics["accuracy"] >= 0.8, metrics
    assert metrics["margin"] > 0, metrics
    assert logs[-1]["pref_loss"] < logs[0]["pref_loss"]


@pytest.mark.parametrize("kind", ["dpo", "kto"])
def test_preference_training_raises_held_out_accuracy(task, tmp_path, kind):
    logs, metrics = _train_and_score(task, tmp_path, kind)
    print(kind, logs[0]["pref_loss"], logs[-1]["pref_loss"], metrics)
    _check_learned(kind, logs, metrics)


def _flip_margin_sign(monkeypatch):
    import mugv_align.losses as losses
    import mugv_align.pair_chunking as pair_chunking

    real = losses.dpo_margin

    def flipped(*args, **kwargs):
        return -real(*args, **kwargs)

    monkeypatch.setattr(losses, "dpo_margin", flipped)  # inside flow_dpo_loss
    monkeypatch.setattr(pair_chunking, "dpo_margin", flipped)  # the logged margin / accuracy


def _swap_winner_and_loser_rows(monkeypatch):
    import mugv_align.trainer as trainer

    real = trainer.build_batch

    def swapped(*args, **kwargs):
        b = real(*args, **kwargs)
        n = len(b.ids)
        order = [*range(n, 2 * n), *range(n)]  # losers first, winners second
        for name in ("noisy_BCTHW", "sigma_B", "target_BCTHW", "noisy_frames_BT", "fps_B"):
            setattr(b, name, getattr(b, name)[order])
        b.drop_caption_B = b.drop_caption_B[order]
        b.texts = [b.texts[i] for i in order]
        return b

    monkeypatch.setattr(trainer, "build_batch", swapped)


@pytest.mark.parametrize("mutate", [_flip_margin_sign, _swap_winner_and_loser_rows])
def test_the_held_out_check_detects_a_broken_dpo_loss(task, tmp_path, monkeypatch, mutate):
    """Mutation test of the check above: with the margin's sign flipped in the code under
    test, or winner and loser rows swapped in its batches, DPO learns the wrong preference
    and the independent held-out check FAILS (issue 23: the old check, scored with the
    package's own margin and row order, stayed green under both mutations)."""
    mutate(monkeypatch)
    logs, metrics = _train_and_score(task, tmp_path, "dpo")
    print(mutate.__name__, metrics)
    with pytest.raises(AssertionError):
        _check_learned("dpo", logs, metrics)
    assert metrics["accuracy"] <= 0.2 and metrics["margin"] < 0, metrics


def _dpo_align(root, **extra):
    return {
        "mode": "dpo",
        "preference": [{"path": str(root / "dpo_train")}],
        "beta": 20.0,
        "sft_weight": 0.5,
        "items_per_micro_batch": 2,
        "reference_from": str(root / "init"),
        **extra,
    }


def _losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


@pytest.fixture(scope="module")
def dpo_reference_run(task, tmp_path_factory):
    """DPO with the SFT regulariser and two power EMAs, checkpoints every 2 steps."""
    root = task["root"]
    tmp = tmp_path_factory.mktemp("dporef")
    cfg = write_config(
        tmp / "c.yaml",
        tmp / "run",
        steps=4,
        align=_dpo_align(root, ema_sigma_rels=[0.05, 0.10], ema_snapshot_every=1),
        train={"init_from": str(root / "init"), "save_every": 2},
    )
    logs, state, ema, _ = _run(cfg)
    return tmp / "run", logs, state, ema


def test_dpo_resume_after_interruption_is_exact(task, dpo_reference_run, tmp_path):
    root = task["root"]
    ref_dir, ref_logs, ref_state, ref_ema = dpo_reference_run
    cfg = write_config(
        tmp_path / "c.yaml",
        tmp_path / "run",
        steps=4,
        align=_dpo_align(root, ema_sigma_rels=[0.05, 0.10], ema_snapshot_every=1),
        train={"init_from": str(root / "init"), "save_every": 2},
    )
    # a real `mugv-align dpo` process is SIGKILLed right after its step-2 checkpoint is
    # declared complete (mid-run: 4 steps); the resumed run continues the uninterrupted one
    dist_vars = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in dist_vars}
    cmd = [sys.executable, "-m", "mugv_align.cli", "dpo", str(cfg), "--micro-batches", "2"]
    latest = tmp_path / "run/checkpoints/latest"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if latest.is_file() and latest.read_text().strip() == "step_0000002":
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read().decode()[-3000:]
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"not killed mid-run (rc {proc.returncode}): {err}"
    assert latest.read_text().strip() == "step_0000002"
    _, state, ema, _ = _run(cfg)
    assert _losses(tmp_path / "run") == _losses(ref_dir)
    for k, v in ref_state.items():
        assert torch.equal(state[k], v), k
    for k, v in ref_ema.items():
        assert torch.equal(ema[k], v), k
    keys = {"pref_loss", "reward_margin", "pref_accuracy", "mean_error_gap", "sft_loss"}
    assert keys <= set(ref_logs[-1])
    assert ref_logs[0]["pref_accuracy"] == 0.0 and ref_logs[0]["mean_error_gap"] == 0.0


def test_kept_checkpoints_keep_their_sampler_states_only(task, tmp_path):
    """train.keep_checkpoints prunes mugv-dit's step folders; align's per-checkpoint sampler
    states (align_state/step_*.json) go with them."""
    root = task["root"]
    cfg = write_config(
        tmp_path / "c.yaml",
        tmp_path / "run",
        steps=3,
        align=_dpo_align(root),
        train={"init_from": str(root / "init"), "save_every": 1, "keep_checkpoints": 1},
    )
    _run(cfg)
    ckpts = tmp_path / "run" / "checkpoints"
    folders = sorted(p.name for p in ckpts.glob("step_*") if p.is_dir())
    states = sorted(p.stem for p in (ckpts / "align_state").glob("step_*.json"))
    assert folders == ["step_0000003"], folders
    assert states == folders, states


def test_precomputed_reference_errors_match_the_live_reference(task, dpo_reference_run, tmp_path):
    from mugv_align.cli import main

    root = task["root"]
    ref_dir, *_ = dpo_reference_run
    align = _dpo_align(
        root,
        ema_sigma_rels=[0.05, 0.10],
        reference="precomputed",
        reference_errors=str(tmp_path / "ref.json"),
    )
    cfg = write_config(
        tmp_path / "c.yaml",
        tmp_path / "run",
        steps=4,
        align=align,
        train={"init_from": str(root / "init")},
    )
    assert main(["precompute-ref", str(cfg), "--output", str(tmp_path / "ref.json")]) == 0
    doc = json.loads((tmp_path / "ref.json").read_text())
    assert len(doc["errors"]) == 16 and all(len(v) == 2 for v in doc["errors"].values())
    logs, *_ = _run(cfg)
    want = _losses(ref_dir)
    for log in logs:
        assert log["loss"] == pytest.approx(want[log["step"]], rel=1e-5, abs=1e-7)
    # a file made for another seed is refused (its noise would not match)
    bad = write_config(
        tmp_path / "b.yaml",
        tmp_path / "bad",
        steps=1,
        align=align,
        train={"init_from": str(root / "init")},
        data={"seed": 8},
    )
    with pytest.raises(ValueError, match="another data.seed"):
        _run(bad)


def test_sft_power_emas_follow_the_trajectory_and_reconstruct(task, tmp_path, capsys):
    """SFT (cosine-annealed LR) with two power EMAs: each EMA equals the power-profile
    average of the actual parameter trajectory (float64 brute force); `ema-reconstruct` of a
    stored sigma_rel returns that EMA; `ema-sweep` evaluates candidates on held-out latents."""
    import numpy as np
    from mugv_align.cli import main
    from mugv_align.ema import discrete_profile, sigma_rel_to_gamma
    from mugv_align.trainer import AlignTrainer
    from mugv_dit.interop.export import load_export

    root = task["root"]
    align = {"mode": "sft", "ema_sigma_rels": [0.05, 0.10], "ema_snapshot_every": 2}
    cfg_path = write_config(
        tmp_path / "c.yaml",
        tmp_path / "run",
        steps=6,
        align=align,
        train={"init_from": str(root / "init")},
        data={"path": str(root / "train_lat")},
    )
    cfg = load_align_config(cfg_path)
    cfg.curriculum[0].lr_decay = "cosine"
    trainer = AlignTrainer(cfg, micro_batches_per_step=1)
    trajectory = []
    update = trainer.update_ema

    def record():
        trajectory.append([p.detach().double().clone() for p in trainer.model.module.parameters()])
        update()

    trainer.update_ema = record
    try:
        logs = trainer.run()
        emas = [[p.detach().double().clone() for p in m.parameters()] for m in trainer.ema.emas]
    finally:
        trainer.close()
    lrs = [log["lr"] for log in logs]
    assert lrs[0] > lrs[-1] >= 0 and lrs == sorted(lrs, reverse=True)  # annealed
    assert len(trajectory) == 6
    for sigma, ema in zip((0.05, 0.10), emas, strict=True):
        w = discrete_profile(6, sigma_rel_to_gamma(sigma))
        for i, p in enumerate(ema):
            want = sum(float(w[t]) * trajectory[t][i] for t in range(6))
            torch.testing.assert_close(p, want, rtol=1e-5, atol=1e-6)
    snaps = sorted(p.parent.name for p in (tmp_path / "run/ema_snapshots").glob("*/snapshot.json"))
    assert snaps == ["step_0000002", "step_0000004", "step_0000006"]

    assert main(["ema-list", "--run", str(tmp_path / "run")]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 6
    out = tmp_path / "ema10"
    assert (
        main(
            [
                "ema-reconstruct",
                "--run",
                str(tmp_path / "run"),
                "--sigma-rel",
                "0.10",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    _, state = load_export(out)
    names = [n for n, _ in trainer.ema.emas[1].named_parameters()]
    for name, p in zip(names, emas[1], strict=True):
        torch.testing.assert_close(state[name].double(), p, rtol=1e-4, atol=1e-5)
    assert (
        main(
            [
                "ema-sweep",
                "--run",
                str(tmp_path / "run"),
                "--data",
                str(root / "held_lat"),
                "--sigma-rels",
                "0.05,0.08",
                "--draws",
                "1",
            ]
        )
        == 0
    )
    sweep = json.loads((tmp_path / "run/ema_sweep.json").read_text())
    assert [r["sigma_rel"] for r in sweep["results"]] == [0.05, 0.08]
    assert all(np.isfinite(r["val_loss"]) for r in sweep["results"])


def test_dpo_on_real_vs_generated_pairs_through_the_cli(task, tmp_path):
    """RDPO end to end: make-pairs (real clips beat the model's samples of the same caption)
    then `mugv-align dpo` on them."""
    from mugv_align.cli import main

    root = task["root"]
    gen = make_task_latents(tmp_path / "gen", prompts=3, seed=9)
    assert (
        main(
            [
                "make-pairs",
                "--real",
                str(root / "train_lat"),
                "--generated",
                str(gen),
                "--output",
                str(tmp_path / "rdpo"),
            ]
        )
        == 0
    )
    align = {
        "preference": [{"path": str(tmp_path / "rdpo/prefs")}],
        "beta": 20.0,
        "items_per_micro_batch": 2,
        "reference_from": str(root / "init"),
        "ema_sigma_rels": [0.05, 0.1],
    }
    cfg = write_config(
        tmp_path / "c.yaml",
        tmp_path / "run",
        steps=2,
        align=align,
        train={"init_from": str(root / "init")},
    )
    assert main(["dpo", str(cfg), "--micro-batches", "1"]) == 0
    resolved = (tmp_path / "run/resolved_config.yaml").read_text()
    assert "mode: dpo" in resolved
    logs = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [0, 1] and all("pref_accuracy" in r for r in logs)
    assert (tmp_path / "run/ema_snapshots/step_0000002/snapshot.json").is_file()
    # the trained policy as an export (e.g. the next stage's reference / start point)
    from mugv_dit.interop.export import load_export

    assert main(["export", "--run", str(tmp_path / "run"), "--output", str(tmp_path / "x")]) == 0
    _, trained = load_export(tmp_path / "x")
    _, init = load_export(root / "init")
    assert trained.keys() == init.keys()
    assert any(not torch.equal(trained[k], init[k]) for k in init)


def _torchrun(script: str, *args: str, nproc: int = 2, timeout: int = 400) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-port",
        str(port),
        script,
        *args,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def _final_weights(run_dir: Path) -> dict:
    from mugv_align_fixtures import model_overrides
    from mugv_dit import build_model
    from mugv_dit.checkpoint import latest_checkpoint, load_model_weights
    from mugv_dit.config import model_preset

    cfg = model_preset("debug", **model_overrides())
    model = build_model(cfg)
    load_model_weights(latest_checkpoint(run_dir / "checkpoints"), model, which="model")
    return {k: v for k, v in model.state_dict().items() if torch.is_tensor(v)}


@pytest.mark.slow
def test_tp2_and_dp2_match_tp1_over_gloo(task, tmp_path):
    """DPO at TP=2 (+ sequence parallel) and DP=2, and KTO at DP=2 (reference point reduced
    over DP ranks), in 2 gloo processes, reproduce the single-process losses and weights."""
    from mugv_align.snapshots import list_snapshots, weighted_average

    root = task["root"]
    runs, refs = [], {}
    for kind, name, parallel in (
        ("dpo", "tp2", {"tensor_parallel": 2, "sequence_parallel": True}),
        ("dpo", "dp2", {}),
        ("kto", "kto_dp2", {}),
    ):
        align = {
            **_dpo_align(root, ema_sigma_rels=[0.05]),
            "mode": kind,
            "preference": [{"path": str(root / f"{kind}_train")}],
        }
        one = write_config(
            tmp_path / f"{name}_1.yaml",
            tmp_path / f"{name}_1",
            steps=3,
            align=align,
            train={"init_from": str(root / "init")},
        )
        two = write_config(
            tmp_path / f"{name}_2.yaml",
            tmp_path / f"{name}_2",
            steps=3,
            align=align,
            train={"init_from": str(root / "init")},
            parallel=parallel,
        )
        _run(one)
        refs[name] = tmp_path / f"{name}_1"
        runs.append({"config": str(two), "micro_batches": 2})
    spec = tmp_path / "runs.json"
    spec.write_text(json.dumps(runs))
    _torchrun(str(Path(__file__).with_name("mugv_align_layouts.py")), str(spec))
    for name, ref_dir in refs.items():
        got_dir = tmp_path / f"{name}_2"
        want, got = _losses(ref_dir), _losses(got_dir)
        assert sorted(got) == [0, 1, 2]
        for step in got:
            assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-7), (name, step)
        w_ref, w_got = _final_weights(ref_dir), _final_weights(got_dir)
        for k, v in w_ref.items():
            torch.testing.assert_close(w_got[k], v, rtol=1e-4, atol=2e-6, msg=f"{name} {k}")
        # the EMA snapshot (TP shards assembled along their partition dims) matches too
        e_ref, e_got = (
            weighted_average(list_snapshots(d / "ema_snapshots"), [1.0]) for d in (ref_dir, got_dir)
        )
        assert sorted(e_ref) == sorted(e_got)
        for k, v in e_ref.items():
            torch.testing.assert_close(e_got[k], v, rtol=1e-4, atol=2e-6, msg=f"{name} ema {k}")


def test_trainer_gradient_equals_autograd_of_the_formula(task, tmp_path):
    """The gradient Megatron accumulates over two micro-batches (main_grad) equals autograd
    of an independent float64 evaluation of the DPO + SFT loss on the whole batch; the
    reference gets no gradient and stays unchanged through training."""
    import torch.nn.functional as F
    from mugv_align.data import build_batch
    from mugv_align.trainer import AlignTrainer
    from mugv_dit.model import PackedText

    root = task["root"]
    beta, w_sft = 20.0, 0.5
    cfg = write_config(
        tmp_path / "c.yaml",
        tmp_path / "run",
        steps=2,
        align=_dpo_align(root, ema_sigma_rels=[]),
        train={"init_from": str(root / "init")},
    )
    trainer = AlignTrainer(load_align_config(cfg), micro_batches_per_step=2)
    try:
        _, plan = trainer.pref_sampler.plan(0)
        src = trainer.sources[0]
        batches = [build_batch(src, mb, trainer.cfg.objective, 7, "cpu") for mb in plan]
        trainer._set_reference_errors(batches)
        trainer.model.zero_grad_buffer()
        n_items = sum(len(b.ids) for b in batches)
        c, h, w = 4, 4, 4
        sft_count = float(
            sum(int(b.noisy_frames_BT[: len(b.ids)].sum()) * c * h * w for b in batches)
        )
        trainer._preference_forward_backward(batches, "dpo", float(n_items), sft_count, None)
        module = trainer.model.module
        got = [p.main_grad.clone() for p in module.parameters()]

        params = list(module.parameters())
        total = torch.zeros((), dtype=torch.float64)
        for b in batches:
            pred = module(
                b.noisy_BCTHW,
                b.sigma_B,
                PackedText.from_list(b.texts),
                fps_B=b.fps_B,
                noisy_frames_BT=b.noisy_frames_BT,
                drop_caption_B=b.drop_caption_B,
            )
            sq = (pred[:, :c].double() - b.target_BCTHW.double()) ** 2
            m = b.noisy_frames_BT[:, None, :, None, None].double()
            e = (sq * m).flatten(1).sum(1) / (m.flatten(1).sum(1) * c * h * w)
            ref = b.ref_error_B.double()
            n = len(b.ids)
            x = -beta / 2 * ((e[:n] - ref[:n]) - (e[n:] - ref[n:]))
            total = total + (-F.logsigmoid(x)).sum() / n_items
            total = total + w_sft * (sq[:n] * m[:n]).sum() / sft_count
        want = torch.autograd.grad(total, params)
        for g, wg in zip(got, want, strict=True):
            tol = 1e-5 * float(wg.abs().max()) + 1e-9
            torch.testing.assert_close(g.double(), wg.double(), rtol=1e-4, atol=tol)
        assert any(g.abs().max() > 0 for g in got)
        ref_before = [p.detach().clone() for p in trainer.ref_model.parameters()]
        trainer.run()
        assert all(p.grad is None and not p.requires_grad for p in trainer.ref_model.parameters())
        for p, q in zip(trainer.ref_model.parameters(), ref_before, strict=True):
            assert torch.equal(p, q)
    finally:
        trainer.close()


@pytest.mark.parametrize("chunking", ["joint", pytest.param("per_sample", marks=pytest.mark.slow)])
def test_pipeline_parallel_matches_pp1_over_gloo(task, tmp_path, chunking):
    """DPO (live reference, power EMA) and KTO (reference point through a no-grad pipeline
    forward) at PP=2 — two stages of one block, 1F1B over two micro-batches, the reference's
    errors from a forward-only pipeline pass — reproduce the single-process losses, weights
    and EMA snapshot; also with ``align.pair_chunking=per_sample`` at PP=2 (one sample per
    pipeline micro-batch, coefficients on the last stage) against the joint PP=1 run."""
    from mugv_align.snapshots import list_snapshots, weighted_average

    root = task["root"]
    runs, refs = [], {}
    for kind in ("dpo", "kto"):
        align = {
            **_dpo_align(root, ema_sigma_rels=[0.05]),
            "mode": kind,
            "preference": [{"path": str(root / f"{kind}_train")}],
        }
        paths = {}
        for layout, parallel in (("pp1", {}), ("pp2", {"pipeline_parallel": 2})):
            paths[layout] = write_config(
                tmp_path / f"{kind}_{layout}.yaml",
                tmp_path / f"{kind}_{layout}",
                steps=3,
                align={**align, "pair_chunking": chunking} if layout == "pp2" else align,
                train={"init_from": str(root / "init")},
                parallel=parallel,
            )
        _run(paths["pp1"])
        refs[kind] = tmp_path / f"{kind}_pp1"
        runs.append({"config": str(paths["pp2"]), "micro_batches": 2})
    spec = tmp_path / "runs.json"
    spec.write_text(json.dumps(runs))
    _torchrun(str(Path(__file__).with_name("mugv_align_layouts.py")), str(spec))
    for kind, ref_dir in refs.items():
        got_dir = tmp_path / f"{kind}_pp2"
        want, got = _losses(ref_dir), _losses(got_dir)
        assert sorted(got) == [0, 1, 2]
        for step in got:
            assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-7), (kind, step)
        w_ref, w_got = _final_weights(ref_dir), _final_weights(got_dir)
        for k, v in w_ref.items():
            torch.testing.assert_close(w_got[k], v, rtol=1e-4, atol=2e-6, msg=f"{kind} {k}")
        e_ref, e_got = (
            weighted_average(list_snapshots(d / "ema_snapshots"), [1.0]) for d in (ref_dir, got_dir)
        )
        assert sorted(e_ref) == sorted(e_got)
        for k, v in e_ref.items():
            torch.testing.assert_close(e_got[k], v, rtol=1e-4, atol=2e-6, msg=f"{kind} ema {k}")
