"""Held-out validation (mugv_dit.validation) and ``advance_on_plateau``: fixed inputs from
the spec, a float64 reference, exact repeatability, checkpointed history, exact resume."""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mugv_dit.config import load_config
from mugv_dit_fixtures import make_latent_dataset

# a small held-out set: images, two clip shapes (bucket / task breakdowns)
VAL_LAYOUT = [(1, 4, 4, 1, 32, 32, 2), (3, 4, 4, 17, 32, 32, 3), (3, 4, 6, 17, 32, 48, 2)]
CURRICULUM = [
    {"name": "a", "steps": 6, "lr": 1e-3, "advance_on_plateau": {"patience": 1, "min_delta": 100}},
    {"name": "b", "steps": 2, "lr": 5e-4, "task_ratios": {"continuation": 1.0}},
]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("val_data")
    return make_latent_dataset(root / "train"), make_latent_dataset(
        root / "val", layout=VAL_LAYOUT, seed=7
    )


def _config(tmp: Path, datasets, out: str, **extra) -> Path:
    train, val = datasets
    raw = {
        "preset": "debug",
        "model": {"text_dim": 32},
        "objective": {"task_ratios": {"t2v": 1.0, "i2v": 1.0}},
        "data": {"path": str(train), "tokens_per_batch": 64, "seed": 5},
        "train": {"progress": False, "ema_decay": None, "save_every": 2},
        "validation": {"path": str(val), "every_steps": 2, "noise_levels": 3},
        "curriculum": CURRICULUM,
        "output_dir": str(tmp / out),
        **extra,
    }
    path = tmp / f"{out}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r[kind] for r in map(json.loads, lines) if kind in r]


def _strip_time(records):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in records]


@pytest.fixture(scope="module")
def val_run(megatron_single, datasets, tmp_path_factory):
    """The whole curriculum with validation every 2 steps; stage "a" ends on a plateau."""
    from mugv_dit.trainer import Trainer

    tmp = tmp_path_factory.mktemp("valrun")
    cfg = _config(tmp, datasets, "run")
    trainer = Trainer(load_config(cfg), micro_batches_per_step=2)
    try:
        logs = trainer.run()
        import mugv_dit.validation as validation

        again = [trainer.validate()]  # the same weights twice, the second one ...
        chunk, validation.CHUNK_MICRO_BATCHES = validation.CHUNK_MICRO_BATCHES, 1
        try:
            again.append(trainer.validate())  # ... one micro-batch per schedule call
        finally:
            validation.CHUNK_MICRO_BATCHES = chunk
        return tmp / "run", logs, again, trainer.validations
    finally:
        trainer.close()


def test_levels_and_items_follow_the_spec():
    from mugv_dit.config import ObjectiveConfig, ValidationConfig
    from mugv_dit.validation import item_seed, micro_batches, plan_items, validation_levels
    from scipy.stats import norm

    got = validation_levels(8, 0.3, 1.2)
    want = [1 / (1 + math.exp(-(0.3 + 1.2 * norm.ppf((k + 0.5) / 8)))) for k in range(8)]
    assert got.dtype == torch.float64
    assert got.tolist() == pytest.approx(want, rel=1e-12)
    digest = hashlib.sha256(b'[3, "s0001", 2]').digest()
    assert item_seed(3, "s0001", 2) == int.from_bytes(digest[:8], "little") % (2**63 - 1)

    class FakeIndex:  # buckets of 5 samples: 1 image, 4 clips of 5 latent frames
        def __init__(self):
            self.records = [type("R", (), {"key": f"k{i}"})() for i in range(5)]

        def __len__(self):
            return 5

        def bucket_of(self, j):
            return (1, 4, 4, 32, 32) if j == 0 else (5, 4, 4, 32, 32)

    obj = ObjectiveConfig(continuation_max_frames=3)
    items = plan_items(FakeIndex(), ValidationConfig(max_samples=4, noise_levels=2), obj,
                       ["t2v", "continuation"])  # fmt: skip
    assert [(it.row, it.level, it.task, it.clean_frames) for it in items] == [
        (0, 0, "t2i", 0), (0, 1, "t2i", 0),
        (1, 0, "continuation", 2), (1, 1, "t2v", 0),
        (2, 0, "t2v", 0), (2, 1, "continuation", 1),
        (3, 0, "continuation", 1), (3, 1, "t2v", 0),
    ]  # fmt: skip
    # 4 tokens per image item (patch 1x2x2 of 1x4x4), 20 per clip item; budget 64 -> 16 / 3
    assert micro_batches(items, 64, 64, (1, 2, 2)) == [[0, 1], [2, 3, 4], [5, 6, 7]]
    assert micro_batches(items, 64, 2, (1, 2, 2)) == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_validation_matches_a_float64_reference(megatron_single, val_run, datasets, tmp_path):
    """The run's final validation loss equals a float64 loop over the items written from the
    spec (quantile levels, resolution shift, per-item seeds, frame masks, noisy-element
    mean) on the exported weights."""
    from mugv_dit import build_model
    from mugv_dit.interop.export import export_run, load_export, load_full_state_dict
    from mugv_dit.model import PackedText
    from mugv_formats import LatentDataset
    from scipy.stats import norm

    run_dir, _, again, _ = val_run
    export_run(run_dir, tmp_path / "export", weights="model")
    model_cfg, state = load_export(tmp_path / "export")
    model = build_model(model_cfg, dtype=torch.float64)
    load_full_state_dict(model, state)
    model.eval()
    reader = LatentDataset(datasets[1]).open_indexed()
    k_levels = 3
    tasks = ["t2v", "i2v", "continuation"]  # the objective's two and stage "b"'s
    sse = count = 0.0
    per_task: dict[str, list[float]] = {}
    for j, rec in enumerate(reader.records):
        sample = reader.load(j)
        x0 = torch.from_numpy(sample.latents).double()[None]
        c, t, h, w = sample.latents.shape
        ratio = math.sqrt(rec.height * rec.width / 512**2) * math.sqrt(t)
        for k in range(k_levels):
            s = 1 / (1 + math.exp(-norm.ppf((k + 0.5) / k_levels)))
            s = ratio * s / (1 + (ratio - 1) * s)
            digest = hashlib.sha256(json.dumps([0, rec.key, k]).encode()).digest()
            seed = int.from_bytes(digest[:8], "little") % (2**63 - 1)
            eps = torch.randn((c, t, h, w), generator=torch.Generator().manual_seed(seed))[None]
            task = "t2i" if t == 1 else tasks[(j + k) % 3]
            clean = {"t2i": 0, "t2v": 0, "i2v": 1}.get(task)
            clean = 1 + (j + k) % min(2, t - 1) if clean is None else clean
            mask = torch.ones(1, t, dtype=torch.bool)
            mask[0, :clean] = False
            xs = torch.where(mask[:, None, :, None, None], (1 - s) * x0 + s * eps.double(), x0)
            with torch.no_grad():
                pred = model(
                    xs, torch.tensor([s], dtype=torch.float64),
                    PackedText.from_list([torch.from_numpy(sample.text).double()]),
                    fps_B=torch.tensor([rec.fps]), noisy_frames_BT=mask,
                )  # fmt: skip
            err = ((pred[:, :c] - (x0 - eps.double())) ** 2 * mask[:, None, :, None, None]).sum()
            n = float(mask.sum()) * c * h * w
            sse, count = sse + float(err), count + n
            acc = per_task.setdefault(task, [0.0, 0.0])
            acc[0], acc[1] = acc[0] + float(err), acc[1] + n
    got = again[0]
    assert got["items"] == len(reader.records) * k_levels
    assert got["loss"] == pytest.approx(sse / count, rel=1e-5)
    for task, (s_, n_) in per_task.items():
        assert got[f"loss_task/{task}"] == pytest.approx(s_ / n_, rel=1e-5), task
    assert {k.split("/")[1] for k in got if k.startswith("loss_bucket/")} == {
        "T1_H4_W4_32x32", "T3_H4_W4_32x32", "T3_H4_W6_32x48"
    }  # fmt: skip


def test_validation_logged_checkpointed_and_plateau_ends_stage(val_run):
    """Two evaluations of the same weights agree exactly (also in chunks of one); validation every 2 steps is in
    metrics.jsonl, TensorBoard and the checkpoint; stage "a" (6 steps, patience 1, an
    improvement must exceed 100) ends after its second validation (step 4): a decision
    logged each time, the run then trains stage "b" for its 2 steps."""
    run_dir, logs, again, history = val_run
    assert _strip_time([again[0]]) == _strip_time([again[1]])
    assert [log["stage"] for log in logs] == ["a"] * 4 + ["b"] * 2
    records = _records(run_dir, "validation")[:3]  # then the two extra evaluations
    assert [r["steps_done"] for r in records] == [2, 4, 6]
    decisions = _records(run_dir, "plateau")
    assert [(d["stage"], d["bad"], d["advance"]) for d in decisions] == [
        ("a", 0, False), ("a", 1, True)
    ]  # fmt: skip
    assert decisions[1]["best"] == records[0]["loss"]
    from mugv_dit.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run_dir / "checkpoints")
    assert ckpt.name == "step_0000006"
    assert _strip_time(history[:3]) == _strip_time(records)
    tb = list((run_dir / "tensorboard").iterdir())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb[0].parent)).Reload()
    assert [e.step for e in acc.Scalars("val/loss")][:3] == [2, 4, 6]
    assert "val/loss_task/i2v" in acc.Tags()["scalars"]


def test_resume_keeps_validation_and_plateau_state(megatron_single, val_run, datasets, tmp_path):
    """Killed after step 3 (last checkpoint: step 2, one validation, the plateau tracker's
    best), the resumed run makes the same plateau decision at the same step and logs the
    same validation losses as the uninterrupted run."""
    from mugv_dit.trainer import Trainer

    run_dir, _, _, _ = val_run
    cfg = _config(tmp_path, datasets, "run")
    for max_steps in (3, None):
        trainer = Trainer(load_config(cfg), micro_batches_per_step=2)
        try:
            trainer.run(max_steps=max_steps)
        finally:
            trainer.close()
    assert _strip_time(_records(tmp_path / "run", "validation")) == _strip_time(
        _records(run_dir, "validation")[:3]
    )
    assert _records(tmp_path / "run", "plateau") == _records(run_dir, "plateau")


def test_plateau_needs_validation(datasets, tmp_path):
    cfg = _config(tmp_path, datasets, "x")
    with pytest.raises(ValueError, match="advance_on_plateau, which needs validation"):
        load_config(cfg, ["validation.path=null"])


LAYOUTS = {
    "tp2": {"tensor_parallel": 2, "sequence_parallel": True},
    "pp2": {"pipeline_parallel": 2},
    "cp2": {"context_parallel": 2},
    "dp2": {},
}


def test_validation_equal_under_pp2(val_run, datasets, tmp_path):
    """The representative two-rank case in the default run: PP=2 (gloo), where only the last
    stage computes errors and the sample export gathers the stages' weights."""
    _check_layouts(["pp2"], val_run, datasets, tmp_path)


@pytest.mark.slow  # one two-rank torchrun launch (~1 min on 2 cores)
def test_validation_equal_under_tp_cp_dp(val_run, datasets, tmp_path):
    """TP=2 (+ sequence parallel), CP=2 and DP=2 (gloo, one launch)."""
    _check_layouts(["tp2", "cp2", "dp2"], val_run, datasets, tmp_path)


def _check_layouts(names, val_run, datasets, tmp_path):
    """The final checkpoint validated under each layout of ``names`` (one two-rank gloo
    launch) gives the single-process metrics, every group; the sample export each layout
    gathers from its live weights equals ``mugv-dit export`` of the checkpoint."""
    import shutil

    from mugv_dit.checkpoint import latest_checkpoint

    run_dir, _, again, _ = val_run
    want = again[0]
    layouts = {name: LAYOUTS[name] for name in names}
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    spec = []
    for name, parallel in layouts.items():
        cfg = _config(tmp_path, datasets, name, parallel=parallel)
        (tmp_path / name / "checkpoints").mkdir(parents=True)
        shutil.copytree(ckpt, tmp_path / name / "checkpoints" / ckpt.name)
        (tmp_path / name / "checkpoints" / "latest").write_text(ckpt.name + "\n")
        spec.append({"config": str(cfg), "result": str(tmp_path / f"{name}.json")})
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    script = str(Path(__file__).with_name("mugv_dit_validation_worker.py"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(port), script, str(tmp_path / "spec.json")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    want = {k: v for k, v in want.items() if k != "time_s"}
    from mugv_dit.interop.export import export_checkpoint, load_export

    _, want_state = load_export(
        export_checkpoint(ckpt, load_config(spec[0]["config"]).model, tmp_path / "ref",
                          weights="model")
    )  # fmt: skip
    for name in layouts:
        _, got_state = load_export(tmp_path / name / "samples" / "exports" / ckpt.name)
        assert set(got_state) == set(want_state), name
        for k, v in want_state.items():
            assert torch.equal(got_state[k], v), (name, k)
        got = json.loads((tmp_path / f"{name}.json").read_text())
        assert {k for k in got if k != "time_s"} == set(want), name
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-5), (name, key)
