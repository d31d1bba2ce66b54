"""The ``mugv.dit-export`` config: the architecture only (format 1.1); format 1.0 exports,
which also stored the writer's runtime settings, still load."""

from __future__ import annotations

import json

import pytest
import torch


def _rewrite_config(path, **changes) -> dict:
    meta = json.loads((path / "config.json").read_text())
    meta.update(changes)
    (path / "config.json").write_text(json.dumps(meta))
    return meta


def test_export_holds_the_architecture_only(megatron_single, debug_cfg, debug_model, tmp_path):
    from mugv_dit.interop.export import full_state_dict, load_export, save_export

    save_export(tmp_path / "new", debug_cfg, full_state_dict(debug_model))
    meta = json.loads((tmp_path / "new" / "config.json").read_text())
    assert meta["version"] == "1.1"
    assert meta["config"] == debug_cfg.model_dump(mode="json")
    assert not {"fused_ops", "recompute", "attention_backend"} & set(meta["config"])
    cfg, _ = load_export(tmp_path / "new")
    assert cfg == debug_cfg


def test_old_style_export_with_runtime_settings_loads(
    megatron_single, debug_cfg, debug_model, tmp_path
):
    """A 1.0 export (as written before the split, e.g. by `import-original`, with
    fused_ops=false) loads into a model run with other runtime settings."""
    from mugv_dit.config import RuntimeConfig
    from mugv_dit.interop.export import (
        build_model_from_export,
        full_state_dict,
        load_export,
        save_export,
    )

    state = full_state_dict(debug_model)
    path = save_export(tmp_path / "old", debug_cfg, state)
    old_config = {
        **debug_cfg.model_dump(mode="json"),
        "attention_backend": "auto",
        "recompute": "none",
        "fused_ops": False,
    }
    _rewrite_config(path, version="1.0", config=old_config)
    cfg, _ = load_export(path)
    assert cfg == debug_cfg
    runtime = RuntimeConfig(fused_ops=True, recompute="full")
    model = build_model_from_export(path, runtime=runtime)
    assert model.runtime == runtime and model.blocks[0].fused_ops
    for name, value in model.state_dict().items():
        if not name.endswith("_extra_state"):
            torch.testing.assert_close(value, state[name], rtol=0, atol=0)


def test_runtime_field_in_a_new_export_is_refused(
    megatron_single, debug_cfg, debug_model, tmp_path
):
    from mugv_dit.interop.export import full_state_dict, load_export, save_export

    path = save_export(tmp_path / "bad", debug_cfg, full_state_dict(debug_model))
    _rewrite_config(path, config={**debug_cfg.model_dump(mode="json"), "fused_ops": True})
    with pytest.raises(
        ValueError,
        match=r"bad/config.json: config does not fit ModelConfig: fused_ops: Extra inputs are not permitted \(value True\)",
    ):
        load_export(path)


def test_architecture_differences_name_each_field(debug_cfg):
    """What train.init_from and mugv-align's reference report; runtime settings are not in
    the architecture, so they can never differ."""
    from mugv_dit.interop.export import architecture_differences

    assert architecture_differences(debug_cfg, debug_cfg.model_copy()) == []
    wide = debug_cfg.model_copy(update={"hidden_size": 96, "num_heads": 8})
    assert architecture_differences(wide, debug_cfg) == [
        "model.hidden_size=48 here, 96 in the export",
        "model.num_heads=4 here, 8 in the export",
    ]
