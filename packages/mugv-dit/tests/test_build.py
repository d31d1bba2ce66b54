"""The public constructors: ``mugv_dit.build_model`` and ``mugv_dit.write_random_export``."""

from __future__ import annotations

import torch


def test_build_model_derives_megatron_config_from_cfg_and_layout(megatron_single, debug_cfg):
    import mugv_dit
    from mugv_dit.model import ParallelContext

    model = mugv_dit.build_model(debug_cfg, dtype=torch.float64, layout=ParallelContext.single())
    tcfg = model.config
    assert (tcfg.num_layers, tcfg.hidden_size, tcfg.num_attention_heads) == (
        debug_cfg.num_layers,
        debug_cfg.hidden_size,
        debug_cfg.num_heads,
    )
    assert tcfg.params_dtype == torch.float64 and tcfg.use_cpu_initialization
    assert (tcfg.tensor_model_parallel_size, tcfg.pipeline_model_parallel_size) == (1, 1)
    assert {p.dtype for p in model.parameters()} == {torch.float64}


def test_write_random_export_is_the_seeded_start_of_a_run(megatron_single, debug_cfg, tmp_path):
    """The export holds exactly the weights a model built after ``torch.manual_seed(seed)``
    has, and the caller's RNG stream is left untouched."""
    import mugv_dit
    from mugv_dit.interop.export import full_state_dict, load_export

    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    path = mugv_dit.write_random_export(debug_cfg, tmp_path / "random", seed=7)
    assert torch.equal(torch.rand(3), expected_next)

    torch.manual_seed(7)
    reference = full_state_dict(mugv_dit.build_model(debug_cfg))
    cfg, state = load_export(path)
    assert cfg == debug_cfg
    assert state.keys() == reference.keys()
    for k, v in reference.items():
        assert torch.equal(state[k], v), k
    other = load_export(mugv_dit.write_random_export(debug_cfg, tmp_path / "r2", seed=8))[1]
    assert not torch.equal(other["final_layer.linear.weight"], state["final_layer.linear.weight"])
