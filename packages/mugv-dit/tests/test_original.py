"""Import of the released MUG-V DiT weights through the explicit name mapping."""

from __future__ import annotations

import pytest
import torch
from mugv_dit import build_model
from mugv_dit.config import model_preset
from mugv_dit.interop.export import load_full_state_dict
from mugv_dit.interop.original import (
    load_original_checkpoint,
    mugv_to_original,
    original_shapes,
    original_to_mugv,
)


def _random_original(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g).double() for k, s in original_shapes(cfg).items()}


def test_10b_preset_matches_release_parameter_count():
    cfg = model_preset("10b")
    n = sum(torch.Size(s).numel() for s in original_shapes(cfg).values())
    assert 10.5e9 < n < 10.9e9, n  # "MUG-DiT-10B"; bf16 ~21.5 GB


def test_import_maps_qkv_per_head_and_patch_conv(megatron_single, debug_cfg, tmp_path):
    orig = _random_original(debug_cfg)
    path = tmp_path / "dit.pt"
    torch.save({k: v.float() for k, v in orig.items()}, path)
    mapped = load_original_checkpoint(str(path), debug_cfg)
    model = build_model(debug_cfg).double()
    mapped["y_embedder.null_caption"] = model.y_embedder.null_caption.detach()
    load_full_state_dict(model, {k: v.double() for k, v in mapped.items()})
    h, nh, d = debug_cfg.hidden_size, debug_cfg.num_heads, debug_cfg.head_dim
    x = torch.randn(5, h, dtype=torch.float64)
    # the release computes qkv then views [N, 3, heads, d]
    ref = (x @ orig["blocks.1.attn.qkv.weight"].T.double() + orig["blocks.1.attn.qkv.bias"]).view(
        5, 3, nh, d
    )
    ours, _ = model.blocks[1].self_attention.qkv(x)
    ours = ours.view(5, nh, 3, d)
    torch.testing.assert_close(ours.transpose(1, 2), ref)
    ref_kv = (x @ orig["blocks.0.cross_attn.kv_linear.weight"].T.double()).view(5, 2, nh, d)
    kv, _ = model.blocks[0].cross_attention.kv(x)
    torch.testing.assert_close(
        (kv - model.blocks[0].cross_attention.kv.bias).view(5, nh, 2, d).transpose(1, 2), ref_kv
    )
    # patch embedding: the conv with kernel = stride = patch equals our linear
    lat = torch.randn(1, debug_cfg.in_channels, 2, 4, 4, dtype=torch.float64)
    conv = torch.nn.functional.conv3d(
        lat, orig["x_embedder.proj.weight"], orig["x_embedder.proj.bias"], stride=(1, 2, 2)
    )
    from mugv_kernels.dit_ops import patchify

    lin = model.x_embedder(patchify(lat, (1, 2, 2)))
    torch.testing.assert_close(lin, conv.flatten(2).transpose(1, 2))
    # and back again
    back = mugv_to_original(mapped, debug_cfg)
    for k, v in orig.items():
        torch.testing.assert_close(back[k].double(), v.float().double())


def test_import_rejects_wrong_shapes(debug_cfg):
    orig = _random_original(debug_cfg)
    orig["blocks.0.mlp.fc1.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp\.fc1\.weight: shape \(3, 3\)"):
        original_to_mugv(orig, debug_cfg)
    del orig["start_token"]
    with pytest.raises(ValueError, match="missing"):
        original_to_mugv(orig, debug_cfg)
