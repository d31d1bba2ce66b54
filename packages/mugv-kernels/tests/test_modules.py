"""The nn.Module wrappers of the fused ops."""

from __future__ import annotations

import mugv_kernels as mk
import pytest
import torch
import torch.nn.functional as F
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


def _rms_norm_rope_f64(x, weight, cos, sin, eps):
    """Float64 oracle written from the definition: per-head RMSNorm with weight, then pair
    ``(2i, 2i+1) = (a, b)`` -> ``(a cos - b sin, a sin + b cos)`` with ``cos/sin[l, i]``."""
    x, weight, cos, sin = (t.double() for t in (x, weight, cos, sin))
    u = x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps) * weight
    a, b = u[..., 0::2], u[..., 1::2]
    c, s = cos[:, None, :], sin[:, None, :]  # [L, 1, Dh/2]: one angle per token and pair
    out = torch.empty_like(u)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = a * s + b * c
    return out


def test_qk_module_gradients_match_float64_reference(gen):
    """Outputs and the gradients of q, k and both learned weights against the float64 oracle,
    with distinct q/k weights (a swapped weight or a dropped weight gradient shows)."""
    head_dim, seq_len, eps = 12, 6, 1e-6
    mod = mk.QKRMSNormRoPE3D(head_dim, eps=eps)
    with torch.no_grad():
        mod.q_weight.copy_(1 + 0.3 * torch.randn(head_dim, generator=gen))
        mod.k_weight.copy_(1 - 0.3 * torch.randn(head_dim, generator=gen))
    angles = torch.rand(seq_len, head_dim // 2, generator=gen, dtype=torch.float64) * 6.3
    cos, sin = angles.cos().float(), angles.sin().float()
    q = torch.randn(2, seq_len, 3, head_dim, generator=gen).requires_grad_()
    k = torch.randn(2, seq_len, 2, head_dim, generator=gen).requires_grad_()
    dq_out, dk_out = torch.randn(q.shape, generator=gen), torch.randn(k.shape, generator=gen)

    q_out, k_out = mod(q, k, cos, sin)
    leaves = (q, k, mod.q_weight, mod.k_weight)
    grads = torch.autograd.grad((q_out, k_out), leaves, (dq_out, dk_out))

    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    q64, k64, qw64, kw64 = leaves64
    q_ref = _rms_norm_rope_f64(q64, qw64, angles.cos(), angles.sin(), eps)
    k_ref = _rms_norm_rope_f64(k64, kw64, angles.cos(), angles.sin(), eps)
    grads64 = torch.autograd.grad((q_ref, k_ref), leaves64, (dq_out.double(), dk_out.double()))

    assert rel_err(q_out, q_ref) < 1e-6 and rel_err(k_out, k_ref) < 1e-6
    for name, g, g64 in zip(("q", "k", "q_weight", "k_weight"), grads, grads64):
        assert g64.abs().sum() > 0, name
        assert rel_err(g, g64) < 1e-5, (name, rel_err(g, g64))
