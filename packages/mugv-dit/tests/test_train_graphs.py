"""``train.cuda_graph``: the trainer's graphed forward+backward (static buffers per step layout,
packed text offsets made outside the graph, the loss scale as a device scalar, eager steps
for dropped captions) gives the eager run's losses step for step, also across a resume. On
the CPU the graphs are GraphedStep's recorded calls: a "replay" runs the step again on the
static buffers, so a buffer the wiring forgot to refill gives a wrong loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from mugv_dit.config import load_config
from mugv_dit_fixtures import make_latent_dataset

CURRICULUM = [
    {"name": "images", "steps": 3, "lr": 1e-3, "image_share_start": 1.0, "image_share_end": 1.0},
    {"name": "short", "steps": 3, "lr": 1e-3, "max_frames": 17},
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_latent_dataset(tmp_path_factory.mktemp("latents") / "ds")


def _config(tmp_path: Path, dataset: Path, out: str, graphs: bool) -> Path:
    raw = {
        "preset": "debug",
        "model": {"text_dim": 32},
        "objective": {"task_ratios": {"t2v": 1.0, "i2v": 1.0}, "caption_dropout": 0.15},
        "data": {"path": str(dataset), "tokens_per_batch": 64, "seed": 1231},
        "train": {
            "progress": False,
            "tensorboard": False,
            "ema_decay": 0.9,
            "save_every": 3,
            "cuda_graph": graphs,
        },
        "curriculum": CURRICULUM,
        "output_dir": str(tmp_path / out),
    }
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _run(cfg_path: Path, max_steps=None):
    from mugv_dit.trainer import Trainer

    trainer = Trainer(load_config(cfg_path), micro_batches_per_step=2)
    try:
        if trainer.graphs is not None:
            # capture at a layout's first step: the test's layouts (buckets x text lengths)
            # seldom repeat within six steps
            trainer.graphs.graphed.warmup = 0
        trainer.run(max_steps=max_steps)
        return trainer.graphs
    finally:
        trainer.close()


def _losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def test_graphed_forward_backward_matches_eager_and_resumes(
    megatron_single, dataset, tmp_path, monkeypatch
):
    from mugv_dit.optim import graphed_forward_backward

    _run(_config(tmp_path, dataset, "eager", graphs=False))
    monkeypatch.setattr(graphed_forward_backward, "why_not", lambda *a: None)  # CPU: recorded
    cfg = _config(tmp_path, dataset, "graphed", graphs=True)
    first = _run(cfg, max_steps=4)  # "killed" after step 4, checkpoint at step 3
    second = _run(cfg)  # resumes at step 3
    want, got = _losses(tmp_path / "eager"), _losses(tmp_path / "graphed")
    assert sorted(got) == list(range(6))
    for step in range(6):
        assert got[step] == want[step], (step, got[step], want[step])
    graphed = [g.graphed.replays for g in (first, second)]
    eager = [g.eager_steps for g in (first, second)]  # steps with a dropped caption
    print("graphed replays", graphed, "eager steps", eager)
    assert sum(graphed) >= 2 and sum(eager) >= 1, (graphed, eager)
    assert first.failure is None and second.failure is None


def test_why_not_names_what_blocks_graphs(megatron_single, dataset, tmp_path):
    from mugv_dit.optim.graphed_forward_backward import why_not

    cfg = load_config(_config(tmp_path, dataset, "x", graphs=True))
    cuda = torch.device("cuda", 0)
    assert "device cpu" in why_not(cfg, torch.device("cpu"), {})
    assert why_not(cfg, cuda, {"tensor_parallel": 1}) is None
    assert "tensor_parallel=2" in why_not(cfg, cuda, {"tensor_parallel": 2})
    cfg.runtime.recompute = "full"
    assert "recompute" in why_not(cfg, cuda, {})
    from mugv_dit.trainer import Trainer

    trainer = Trainer(cfg, micro_batches_per_step=1)  # asked for graphs on the CPU: eager
    try:
        assert trainer.graphs is None
    finally:
        trainer.close()
