"""The model with an explicit attention backend. Backend selection, FlashAttention-4's head-dim
padding and the packed-text attention are mugv_kernels.attention's, tested in mugv-kernels'
tests/test_attention.py; the GPU checks against float64 live in test_gpu_fa4.py."""

from __future__ import annotations

import torch


def test_model_runs_with_explicit_sdpa_backend(megatron_single, debug_cfg):
    from mugv_dit import build_model
    from mugv_dit.config import RuntimeConfig
    from mugv_dit.model import PackedText

    cfg = debug_cfg
    torch.manual_seed(0)
    model = build_model(cfg, runtime=RuntimeConfig(attention_backend="sdpa"))
    assert all(block.self_attention.backend == "sdpa" for block in model.blocks)
    x = torch.randn(1, cfg.in_channels, 2, 4, 4)
    out = model(
        x,
        torch.rand(1),
        PackedText.from_list([torch.randn(3, cfg.text_dim)]),
        fps_B=torch.tensor([24.0]),
    )
    assert out.shape == (1, cfg.out_channels, 2, 4, 4) and torch.isfinite(out).all()
