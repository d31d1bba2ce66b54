"""Width expansion x2 preserves the function (exactly without noise, closely with it)."""

from __future__ import annotations

import torch
from mugv_dit import build_model
from mugv_dit.interop.expansion import widen_state_dict, widened_config
from mugv_dit.interop.export import load_full_state_dict
from mugv_dit.model import PackedText


def _run(model, seed=3):
    g = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    x = torch.randn(2, cfg.in_channels, 3, 4, 4, generator=g, dtype=torch.float64)
    texts = [
        torch.randn(4, cfg.text_dim, generator=g, dtype=torch.float64),
        torch.randn(6, cfg.text_dim, generator=g, dtype=torch.float64),
    ]
    noisy = torch.tensor([[False, True, True], [True, True, True]])
    return model(
        x,
        torch.tensor([0.3, 0.8], dtype=torch.float64),
        PackedText.from_list(texts),
        fps_B=torch.tensor([24.0, 12.0], dtype=torch.float64),
        noisy_frames_BT=noisy,
        drop_caption_B=torch.tensor([False, True]),
    )


def test_widen_x2_is_function_preserving(megatron_single, debug_cfg):
    torch.manual_seed(0)
    narrow = build_model(debug_cfg).double().eval()
    wide_cfg = widened_config(debug_cfg)
    assert (wide_cfg.hidden_size, wide_cfg.num_heads, wide_cfg.head_dim) == (96, 8, 12)
    wide = build_model(wide_cfg).double().eval()
    state = {k: v for k, v in narrow.state_dict().items() if not k.endswith("_extra_state")}
    load_full_state_dict(wide, widen_state_dict(state, noise=0.0))
    ref = _run(narrow)
    torch.testing.assert_close(_run(wide), ref, rtol=1e-10, atol=1e-10)
    load_full_state_dict(wide, widen_state_dict(state, noise=1e-3, seed=1))
    noisy_out = _run(wide)
    rel = (noisy_out - ref).norm() / ref.norm()
    assert 0 < rel < 2e-2, rel
