"""Weights of the released MUG-V DiT (``dit.pt``) <-> mugv's MUGDiT, by explicit name mapping.

The release (Shopee-MUG/MUG-V, ``mug_v/dit/model.py``) names parameters as listed in
:func:`original_shapes`. Differences handled here:

* ``x_embedder.proj`` is a Conv3d with kernel = stride = patch; mugv uses the equivalent
  linear over ``(C, pt, ph, pw)`` patches (same flattening order).
* fused ``attn.qkv`` rows are ``[(q, k, v), heads, head_dim]`` in the release and
  ``[heads, (q, k, v), head_dim]`` in mugv (so a TP column split hands out whole heads);
  ``cross_attn.kv_linear`` likewise ``[(k, v), heads, d]`` -> ``[heads, (k, v), d]``.
* the release has no learned null caption; mugv's ``y_embedder.null_caption`` keeps the
  target model's value (or its initialisation).

Behavioural note: the release's start/end tokens take the t=0 modulation whenever a frame mask
is passed (always in its training code) but the t modulation when none is (its plain T2V
inference path); mugv always uses t=0 for them, i.e. the training behaviour.
"""

from __future__ import annotations

import torch
from mugv_formats.weights import check_state_dict_fits

from mugv_dit.config import ModelConfig

_BLOCK_MAP = {
    "attn.qkv.weight": "self_attention.qkv.weight",
    "attn.qkv.bias": "self_attention.qkv.bias",
    "attn.q_norm.weight": "self_attention.q_norm_weight",
    "attn.k_norm.weight": "self_attention.k_norm_weight",
    "attn.proj.weight": "self_attention.proj.weight",
    "attn.proj.bias": "self_attention.proj.bias",
    "cross_attn_norm.weight": "cross_norm_weight",
    "cross_attn_norm.bias": "cross_norm_bias",
    "cross_attn.q_linear.weight": "cross_attention.q.weight",
    "cross_attn.q_linear.bias": "cross_attention.q.bias",
    "cross_attn.kv_linear.weight": "cross_attention.kv.weight",
    "cross_attn.kv_linear.bias": "cross_attention.kv.bias",
    "cross_attn.q_norm.weight": "cross_attention.q_norm_weight",
    "cross_attn.k_norm.weight": "cross_attention.k_norm_weight",
    "cross_attn.proj.weight": "cross_attention.proj.weight",
    "cross_attn.proj.bias": "cross_attention.proj.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "scale_shift_table": "scale_shift_table",
}
_TOP_MAP = {
    "x_embedder.proj.weight": "x_embedder.weight",
    "x_embedder.proj.bias": "x_embedder.bias",
    "t_embedder.mlp.0.weight": "t_embedder.fc1.weight",
    "t_embedder.mlp.0.bias": "t_embedder.fc1.bias",
    "t_embedder.mlp.2.weight": "t_embedder.fc2.weight",
    "t_embedder.mlp.2.bias": "t_embedder.fc2.bias",
    "fps_embedder.mlp.0.weight": "fps_embedder.fc1.weight",
    "fps_embedder.mlp.0.bias": "fps_embedder.fc1.bias",
    "fps_embedder.mlp.2.weight": "fps_embedder.fc2.weight",
    "fps_embedder.mlp.2.bias": "fps_embedder.fc2.bias",
    "t_block.1.weight": "t_block.weight",
    "t_block.1.bias": "t_block.bias",
    "y_embedder.y_proj.fc1.weight": "y_embedder.fc1.weight",
    "y_embedder.y_proj.fc1.bias": "y_embedder.fc1.bias",
    "y_embedder.y_proj.fc2.weight": "y_embedder.fc2.weight",
    "y_embedder.y_proj.fc2.bias": "y_embedder.fc2.bias",
    "start_token": "start_token",
    "end_token": "end_token",
    "final_layer.scale_shift_table": "final_layer.scale_shift_table",
    "final_layer.linear.weight": "final_layer.linear.weight",
    "final_layer.linear.bias": "final_layer.linear.bias",
}


def name_map(num_layers: int) -> dict[str, str]:
    """Release parameter name -> mugv parameter name."""
    out = dict(_TOP_MAP)
    for i in range(num_layers):
        out.update({f"blocks.{i}.{k}": f"blocks.{i}.{v}" for k, v in _BLOCK_MAP.items()})
    return out


def original_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the release's state dict for a model config."""
    h, d, c = cfg.hidden_size, cfg.head_dim, cfg.in_channels
    pt, ph, pw = cfg.patch_size
    f, fd = cfg.ffn_size, cfg.freq_embed_dim
    shapes: dict[str, tuple[int, ...]] = {
        "x_embedder.proj.weight": (h, c, pt, ph, pw),
        "x_embedder.proj.bias": (h,),
        "t_block.1.weight": (6 * h, h),
        "t_block.1.bias": (6 * h,),
        "y_embedder.y_proj.fc1.weight": (h, cfg.text_dim),
        "y_embedder.y_proj.fc1.bias": (h,),
        "y_embedder.y_proj.fc2.weight": (h, h),
        "y_embedder.y_proj.fc2.bias": (h,),
        "start_token": (h,),
        "end_token": (h,),
        "final_layer.scale_shift_table": (2, h),
        "final_layer.linear.weight": (pt * ph * pw * cfg.out_channels, h),
        "final_layer.linear.bias": (pt * ph * pw * cfg.out_channels,),
    }
    for emb in ("t_embedder", "fps_embedder"):
        shapes.update(
            {
                f"{emb}.mlp.0.weight": (h, fd),
                f"{emb}.mlp.0.bias": (h,),
                f"{emb}.mlp.2.weight": (h, h),
                f"{emb}.mlp.2.bias": (h,),
            }
        )
    block = {
        "attn.qkv.weight": (3 * h, h),
        "attn.qkv.bias": (3 * h,),
        "attn.q_norm.weight": (d,),
        "attn.k_norm.weight": (d,),
        "attn.proj.weight": (h, h),
        "attn.proj.bias": (h,),
        "cross_attn_norm.weight": (h,),
        "cross_attn_norm.bias": (h,),
        "cross_attn.q_linear.weight": (h, h),
        "cross_attn.q_linear.bias": (h,),
        "cross_attn.kv_linear.weight": (2 * h, h),
        "cross_attn.kv_linear.bias": (2 * h,),
        "cross_attn.q_norm.weight": (d,),
        "cross_attn.k_norm.weight": (d,),
        "cross_attn.proj.weight": (h, h),
        "cross_attn.proj.bias": (h,),
        "mlp.fc1.weight": (f, h),
        "mlp.fc1.bias": (f,),
        "mlp.fc2.weight": (h, f),
        "mlp.fc2.bias": (h,),
        "scale_shift_table": (6, h),
    }
    for i in range(cfg.num_layers):
        shapes.update({f"blocks.{i}.{k}": v for k, v in block.items()})
    return shapes


def _fused_to_per_head(t: torch.Tensor, parts: int, heads: int) -> torch.Tensor:
    """Rows ``[parts, heads, d]`` -> ``[heads, parts, d]``."""
    rest = t.shape[1:]
    return t.reshape(parts, heads, -1, *rest).transpose(0, 1).reshape(t.shape)


def _per_head_to_fused(t: torch.Tensor, parts: int, heads: int) -> torch.Tensor:
    rest = t.shape[1:]
    return t.reshape(heads, parts, -1, *rest).transpose(0, 1).reshape(t.shape)


def _parts(name: str) -> int:
    if ".attn.qkv." in name:
        return 3
    if ".cross_attn.kv_linear." in name:
        return 2
    return 0


def original_to_mugv(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Map a release state dict (``dit.pt``) onto mugv names/layouts; checks every shape."""
    check_state_dict_fits(
        state, original_shapes(cfg), where="not a MUG-V DiT state dict for this config"
    )
    names = name_map(cfg.num_layers)
    out = {}
    for name, t in state.items():
        if name == "x_embedder.proj.weight":
            t = t.reshape(t.shape[0], -1)
        elif parts := _parts(name):
            t = _fused_to_per_head(t, parts, cfg.num_heads)
        out[names[name]] = t
    return out


def mugv_to_original(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Inverse of :func:`original_to_mugv` (the null caption has no counterpart)."""
    shapes = original_shapes(cfg)
    out = {}
    for orig, ours in name_map(cfg.num_layers).items():
        t = state[ours]
        if orig == "x_embedder.proj.weight":
            t = t.reshape(shapes[orig])
        elif parts := _parts(orig):
            t = _per_head_to_fused(t, parts, cfg.num_heads)
        out[orig] = t
    return out


def load_original_checkpoint(path: str, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Read ``dit.pt`` safely (``weights_only=True``) and map it to mugv names."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    for key in ("state_dict", "model", "module"):
        if key in state and isinstance(state[key], dict):
            state = state[key]
    return original_to_mugv(state, cfg)
