"""Run configs: presets, YAML + overrides, validation errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mugv_dit.config import MODEL_PRESETS, dump_config, load_config, model_preset
from mugv_formats.config_loading import apply_overrides

CONFIGS = Path(__file__).parents[1] / "configs"


def test_presets_match_the_report():
    ten = model_preset("10b")
    assert (ten.hidden_size, ten.num_layers, ten.num_heads, ten.head_dim, ten.ffn_size) == (
        3456,
        56,
        48,
        72,
        13824,
    )
    for name, hidden in [("1b", 1152), ("2b", 1728), ("4b", 2304), ("18b", 4608)]:
        cfg = model_preset(name)
        assert cfg.hidden_size == hidden and cfg.head_dim == 72 and cfg.num_layers == 56
    assert set(MODEL_PRESETS) == {"debug", "1b", "2b", "4b", "10b", "18b"}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load_and_roundtrip(path):
    cfg = load_config(path, ["train.seed=7"])
    assert cfg.train.seed == 7
    again = load_config(None, [])  # defaults load too
    assert again.total_steps > 0
    resolved = yaml.safe_load(dump_config(cfg))
    assert resolved["train"]["seed"] == 7 and resolved["model"] == cfg.model.model_dump(mode="json")


def test_overrides_and_errors(tmp_path):
    raw = apply_overrides({}, ["model.hidden_size=96", "curriculum=[{name: a, steps: 2}]"])
    assert raw["model"]["hidden_size"] == 96 and raw["curriculum"][0]["steps"] == 2
    with pytest.raises(ValueError, match="must look like key.path=value"):
        apply_overrides({}, ["nonsense"])
    with pytest.raises(ValueError, match="head_dim=10 must be divisible by 6"):
        load_config(None, ["model.hidden_size=40", "model.num_heads=4"])
    with pytest.raises(ValueError, match="unknown tasks"):
        load_config(None, ["objective.task_ratios={t2x: 1}"])
    with pytest.raises(ValueError, match="unique"):
        load_config(None, ["curriculum=[{name: a, steps: 1}, {name: a, steps: 1}]"])
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_parallel_layout_errors_name_the_fields():
    cfg = load_config(None, ["parallel.pipeline_parallel=2", "parallel.context_parallel=2"])
    assert cfg.parallel.pipeline_parallel == 2 and cfg.parallel.context_parallel == 2
    with pytest.raises(
        ValueError, match=r"num_layers=2 not divisible by parallel.pipeline_parallel=4"
    ):
        load_config(None, ["parallel.pipeline_parallel=4"])
    with pytest.raises(ValueError, match=r"num_heads=4 not divisible by .*context_parallel=8"):
        load_config(None, ["parallel.tensor_parallel=2", "parallel.context_parallel=4"])
    with pytest.raises(ValueError, match="context_parallel"):
        load_config(None, ["parallel.context_parallel=0"])


def test_model_stage_split_needs_divisible_layers(megatron_single, debug_cfg):
    from mugv_dit import build_model

    model = build_model(debug_cfg)
    # a single stage holds everything, named as in the full model
    assert model.pre_process and model.post_process and model.layer_offset == 0
    assert model.global_name("blocks.1.mlp.fc1.weight") == "blocks.1.mlp.fc1.weight"
    assert model.padded_length((1, 24, 3, 4, 6)) == 3 * 2 * 3 + 2


def test_runtime_settings_are_their_own_section(tmp_path):
    cfg = load_config(None, ["runtime.fused_ops=true", "runtime.recompute=full"])
    assert cfg.runtime.fused_ops and cfg.runtime.recompute == "full"
    assert "fused_ops" not in cfg.model.model_dump()
    assert yaml.safe_load(dump_config(cfg))["runtime"]["fused_ops"] is True


def test_runtime_settings_under_model_are_read_from_old_configs(tmp_path):
    """A resolved_config.yaml written before the split sets them under `model`."""
    old = tmp_path / "resolved_config.yaml"
    old.write_text(yaml.safe_dump({"model": {"text_dim": 32, "fused_ops": True}}))
    with pytest.warns(FutureWarning, match=r"model.fused_ops .* runtime.fused_ops=True"):
        cfg = load_config(old)
    assert cfg.runtime.fused_ops and cfg.model.text_dim == 32
    with pytest.raises(ValueError, match=r"model.fused_ops=True and runtime.fused_ops=False"):
        load_config(old, ["runtime.fused_ops=false"])


def test_cli_config_errors_are_one_line_naming_file_field_value(tmp_path, capsys):
    from mugv_dit.cli import main

    path = tmp_path / "run.yaml"
    path.write_text("preset: debug\ncurriculum: [{name: a, steps: 2}, {name: b, steps: 3}]\n")
    cfg = load_config(path, ["curriculum.1.steps=5", "model.num_layers=4"])
    assert [s.steps for s in cfg.curriculum] == [2, 5] and cfg.model.num_layers == 4
    assert cfg.model.text_dim == MODEL_PRESETS["debug"]["text_dim"]  # preset still expanded
    assert main(["train", str(path), "--set", "curriculum.1.steps=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(path) in err and "curriculum.1.steps = 0" in err


def test_mfu_peak_and_keep_checkpoints_come_from_config():
    cfg = load_config(None)
    assert cfg.train.peak_tflops == 989.0 and cfg.train.keep_checkpoints == 0
    cfg = load_config(None, ["train.peak_tflops=312", "train.keep_checkpoints=3"])
    assert cfg.train.peak_tflops == 312.0 and cfg.train.keep_checkpoints == 3
    assert load_config(None, ["train.peak_tflops=null"]).train.peak_tflops is None
    with pytest.raises(ValueError, match="train.keep_checkpoints = -1"):
        load_config(None, ["train.keep_checkpoints=-1"])
