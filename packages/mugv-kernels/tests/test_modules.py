"""Module wrappers and the Megatron sequence-parallel norms."""

from __future__ import annotations

from types import SimpleNamespace

import mugv_kernels as mk
import pytest
import torch
import torch.nn.functional as F
from mugv_kernels.megatron_norms import (
    SequenceParallelLayerNorm,
    SequenceParallelNorm,
    SequenceParallelRMSNorm,
)
from torch import nn

from .conftest import rel_err


def test_group_norm_silu_module_loads_nn_group_norm_weights(gen):
    plain = nn.GroupNorm(4, 16, eps=1e-6)
    with torch.no_grad():
        plain.weight.normal_(generator=gen)
        plain.bias.normal_(generator=gen)
    fused = mk.GroupNormSiLU(4, 16, eps=1e-6)
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(2, 16, 3, 8, 8, generator=gen)
    assert rel_err(fused(x), F.silu(plain(x))) < 1e-6


def test_modulated_layer_norm_module_checks_hidden_size(gen):
    mod = mk.ModulatedLayerNorm(8)
    x = torch.randn(2, 3, 8, generator=gen)
    shift, scale = torch.randn(2, 8, generator=gen), torch.randn(2, 8, generator=gen)
    assert torch.equal(mod(x, shift, scale), mk.modulated_layer_norm(x, shift, scale))
    with pytest.raises(ValueError, match="hidden size 8"):
        mod(torch.randn(2, 3, 9), shift, scale)


def test_qk_module_has_trainable_weights(gen):
    mod = mk.QKRMSNormRoPE3D(12)
    cos, sin = mk.rope3d_frequencies((1, 2, 2), 12)
    q = torch.randn(1, 4, 2, 12, generator=gen)
    q_out, k_out = mod(q, q.clone(), cos, sin)
    (q_out.sum() + k_out.square().sum()).backward()
    assert mod.q_weight.grad is not None and mod.k_weight.grad.abs().sum() > 0


def _config(**kw):
    base = {
        "sequence_parallel": True,
        "layernorm_zero_centered_gamma": False,
        "params_dtype": torch.float32,
        "normalization": "LayerNorm",
    }
    return SimpleNamespace(**{**base, **kw})


@pytest.mark.parametrize("sequence_parallel", [True, False])
def test_sequence_parallel_norms_mark_their_parameters(sequence_parallel):
    for cls in (SequenceParallelLayerNorm, SequenceParallelRMSNorm):
        norm = cls(_config(sequence_parallel=sequence_parallel), 16, eps=1e-5)
        assert list(norm.parameters())
        assert all(p.sequence_parallel is sequence_parallel for p in norm.parameters())


def test_sequence_parallel_norms_compute_plain_norms(gen):
    x = torch.randn(5, 2, 16, generator=gen).bfloat16()
    ln = SequenceParallelLayerNorm(_config(), 16, 1e-5)
    with torch.no_grad():
        ln.weight.normal_(generator=gen)
        ln.bias.normal_(generator=gen)
    expected = F.layer_norm(x.float(), (16,), ln.weight, ln.bias, 1e-5)
    assert rel_err(ln(x), expected) < 1e-2
    rms = SequenceParallelRMSNorm(_config(layernorm_zero_centered_gamma=True), 16, 1e-5)
    assert torch.equal(rms.weight, torch.zeros(16))  # zero-centred: applied weight is 1 + w
    expected = F.rms_norm(x.float(), (16,), torch.ones(16), 1e-5)
    assert rel_err(rms(x), expected) < 1e-2


def test_norm_builder_chooses_by_config():
    assert isinstance(SequenceParallelNorm(_config(), 8), SequenceParallelLayerNorm)
    rms = SequenceParallelNorm(_config(normalization="RMSNorm"), 8, 1e-6)
    assert isinstance(rms, SequenceParallelRMSNorm) and rms.eps == 1e-6
    with pytest.raises(ValueError, match="normalization"):
        SequenceParallelNorm(_config(normalization="BatchNorm"), 8)


def test_megatron_builds_the_norms_from_a_spec():
    """With megatron-core installed, its own ModuleSpec/build_module path accepts the norms."""
    core = pytest.importorskip("megatron.core.transformer")
    from megatron.core.transformer.spec_utils import ModuleSpec, build_module

    config = core.TransformerConfig(
        num_layers=1,
        hidden_size=16,
        num_attention_heads=2,
        sequence_parallel=True,
        tensor_model_parallel_size=2,
        normalization="RMSNorm",
    )
    norm = build_module(
        ModuleSpec(module=SequenceParallelNorm), config=config, hidden_size=16, eps=1e-5
    )
    assert isinstance(norm, SequenceParallelRMSNorm)
    assert norm.weight.sequence_parallel is True
