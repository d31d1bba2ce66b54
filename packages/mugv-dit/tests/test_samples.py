"""Samples during training (mugv_dit.samples): the trainer writes its weights every
``samples.every_steps`` steps as an export equal to ``mugv-dit export`` of the checkpoint of
the same step, with the fixed prompts and seeds; older exports pruned to ``samples.keep``."""

from __future__ import annotations

import pytest
import torch
import yaml
from mugv_dit.config import load_config
from mugv_dit_fixtures import make_latent_dataset

SAMPLES = {"every_steps": 2, "keep": 1, "prompts": ["a red car", "waves"], "seeds": [0, 5],
           "height": 32, "width": 48, "num_frames": 9, "inference_steps": 2}  # fmt: skip


def _config(tmp_path, **extra):
    raw = {
        "preset": "debug",
        "model": {"text_dim": 32},
        "data": {"path": str(make_latent_dataset(tmp_path / "lat")), "tokens_per_batch": 64},
        "train": {"progress": False, "ema_decay": 0.9},
        "samples": SAMPLES,
        "curriculum": [{"name": "a", "steps": 4, "lr": 1e-3}],
        "output_dir": str(tmp_path / "run"),
        **extra,
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_sample_exports_equal_the_checkpoint_exports(megatron_single, tmp_path):
    from mugv_dit.interop.export import export_checkpoint, load_export
    from mugv_dit.trainer import Trainer
    from mugv_formats import DIT_EXPORT_FORMAT, load_weights_folder

    cfg = load_config(_config(tmp_path))
    trainer = Trainer(cfg, micro_batches_per_step=2)
    try:
        trainer.run()
    finally:
        trainer.close()
    root = tmp_path / "run" / "samples" / "exports"
    assert sorted(p.name for p in root.iterdir()) == ["step_0000004"]  # step 2 pruned: keep 1
    for step in (4,):  # the final checkpoint
        got_cfg, got = load_export(root / f"step_{step:07d}")
        ckpt = tmp_path / "run" / "checkpoints" / f"step_{step:07d}"
        want_cfg, want = load_export(
            export_checkpoint(ckpt, cfg.model, tmp_path / f"want{step}", weights="ema")
        )
        assert got_cfg == want_cfg and set(got) == set(want)
        for k in want:
            assert torch.equal(got[k], want[k]), (step, k)
        extra = load_weights_folder(root / f"step_{step:07d}", format=DIT_EXPORT_FORMAT).extra
        assert extra["step"] == step and extra["weights"] == "ema"
        assert {k: extra["samples"][k] for k in SAMPLES} == SAMPLES


def test_samples_config_is_checked(tmp_path):
    path = _config(tmp_path)
    with pytest.raises(ValueError, match="give samples.prompts"):
        load_config(path, ["samples.prompts=[]"])
    with pytest.raises(ValueError, match="keeps no EMA"):
        load_config(path, ["samples.weights=ema", "train.ema_decay=null"])


def test_prune_touches_only_our_exports(tmp_path):
    """Later steps (an abandoned timeline) and all but the newest ``keep`` go; a user's
    folder named like a step is left alone."""
    from mugv_dit.config import model_preset
    from mugv_dit.interop.export import save_export
    from mugv_dit.samples import prune_exports

    cfg = model_preset("debug")
    tiny = {"w": torch.zeros(1)}
    for step in (2, 4, 6, 8):
        save_export(tmp_path / f"step_{step:07d}", cfg, tiny)
    (tmp_path / "step_0000001").mkdir()
    (tmp_path / "step_0000001" / "notes.txt").write_text("mine")
    removed = prune_exports(tmp_path, 6, keep=2)
    assert sorted(p.name for p in removed) == ["step_0000002", "step_0000008"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step_0000001", "step_0000004", "step_0000006"
    ]  # fmt: skip
