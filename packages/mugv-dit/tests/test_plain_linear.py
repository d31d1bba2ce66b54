"""The TP=1 fast path of the DiT's Megatron linears (one ``F.linear`` call, bias in the GEMM
epilogue) against the Megatron layer it stands in for: same output, same gradients."""

from __future__ import annotations

import torch


def _layers():
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from mugv_dit.config import ModelConfig
    from mugv_dit.model import megatron_config

    cfg = megatron_config(
        ModelConfig(hidden_size=48, num_heads=2, num_layers=1, text_dim=16),
        params_dtype=torch.float64,
    )
    torch.manual_seed(0)
    col = ColumnParallelLinear(48, 80, config=cfg, init_method=cfg.init_method, bias=True)
    row = RowParallelLinear(
        80, 48, config=cfg, init_method=cfg.output_layer_init_method, bias=True,
        input_is_parallel=True, skip_bias_add=False,
    )  # fmt: skip
    for layer in (col, row):
        layer.double()
        with torch.no_grad():
            layer.bias.normal_()  # Megatron initialises biases to zero: make them count
    return col, row


def _grads(fn, x, layers):
    for layer in layers:
        for p in layer.parameters():
            p.grad = None
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    out.backward(torch.ones_like(out) + torch.arange(out.shape[-1], dtype=out.dtype) / 7)
    return out.detach(), x.grad, [p.grad.clone() for layer in layers for p in layer.parameters()]


def test_plain_linear_path_matches_megatron_layers(megatron_single):
    from mugv_dit.model.attention import column_forward, is_plain_linear, row_forward

    col, row = _layers()
    assert is_plain_linear(col) and is_plain_linear(row)
    x = torch.randn(2, 5, 48, dtype=torch.float64)
    fast = _grads(lambda t: row_forward(row, torch.tanh(column_forward(col, t))), x, (col, row))
    slow = _grads(lambda t: row(torch.tanh(col(t)[0]))[0], x, (col, row))
    torch.testing.assert_close(fast[0], slow[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast[1], slow[1], rtol=1e-12, atol=1e-12)
    for a, b in zip(fast[2], slow[2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_skip_bias_add_keeps_megatron_path(megatron_single):
    from megatron.core.tensor_parallel import RowParallelLinear
    from mugv_dit.config import ModelConfig
    from mugv_dit.model import megatron_config
    from mugv_dit.model.attention import is_plain_linear

    cfg = megatron_config(ModelConfig(hidden_size=48, num_heads=2, num_layers=1, text_dim=16))
    row = RowParallelLinear(
        48, 48, config=cfg, init_method=cfg.output_layer_init_method, bias=True,
        input_is_parallel=True, skip_bias_add=True,
    )  # fmt: skip
    assert not is_plain_linear(row)
