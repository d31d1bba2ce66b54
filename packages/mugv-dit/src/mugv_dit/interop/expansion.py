"""Function-preserving width expansion x2 (2B -> 10B style scaling).

The wide model carries the narrow residual stream duplicated, ``[x, x]``: LayerNorm over 2h
of ``[x, x]`` equals ``[LN(x), LN(x)]``, so every layer stays consistent when

* a layer that PRODUCES hidden-like features tiles its output rows (``[W; W]``),
* a layer that CONSUMES them halves and tiles its input columns (``[W/2, W/2]``, the 1/e
  scaling with e = 2),
* attention heads double (copies of the narrow heads) and the head dim stays: fused
  projections are laid out per head, so tiling their rows appends the head copies.

A small Gaussian noise (``noise`` x each tensor's std) breaks the symmetry so the copies can
diverge in training; with ``noise=0`` the wide model computes exactly the narrow function.
"""

from __future__ import annotations

import torch

from mugv_dit.config import ModelConfig

# name suffix -> (output rows tiled, input columns halved+tiled, grouped rows)
_HIDDEN_IN = (
    "self_attention.qkv",
    "self_attention.proj",
    "cross_attention.q",
    "cross_attention.kv",
    "cross_attention.proj",
    "mlp.fc1",
    "mlp.fc2",
    "t_embedder.fc2",
    "fps_embedder.fc2",
    "y_embedder.fc2",
    "final_layer.linear",
)
_UNCHANGED = ("q_norm_weight", "k_norm_weight", "null_caption", "final_layer.linear.bias")


def widened_config(cfg: ModelConfig) -> ModelConfig:
    """The x2 config: hidden, heads and FFN double; head dim, depth, text dim stay."""
    return cfg.model_copy(
        update={
            "hidden_size": 2 * cfg.hidden_size,
            "num_heads": 2 * cfg.num_heads,
            "ffn_hidden_size": 2 * cfg.ffn_size,
        }
    )


def _tile_rows(t: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Duplicate dim 0 within each of ``groups`` equal row groups."""
    g = t.reshape(groups, t.shape[0] // groups, *t.shape[1:])
    return torch.cat([g, g], dim=1).reshape(2 * t.shape[0], *t.shape[1:])


def _halve_cols(t: torch.Tensor) -> torch.Tensor:
    return torch.cat([t / 2, t / 2], dim=1)


def widen_tensor(name: str, t: torch.Tensor) -> torch.Tensor:
    """Widen one parameter of a full (TP=1) MUGDiT state dict (exact, no noise)."""
    if name.endswith(_UNCHANGED):
        return t.clone()
    if name in ("t_block.weight", "t_block.bias"):
        out = _tile_rows(t, groups=6)  # six modulation vectors, each hidden-sized
        return _halve_cols(out) if out.dim() == 2 else out
    if name.endswith("scale_shift_table"):
        return torch.cat([t, t], dim=1)  # [k, h] -> [k, 2h]
    if name == "final_layer.linear.weight":
        return _halve_cols(t)
    module = name.rsplit(".", 1)[0]
    if module.endswith(_HIDDEN_IN) and name.endswith(".weight"):
        return _halve_cols(_tile_rows(t))
    # everything else produces hidden-like features: tile the rows
    return _tile_rows(t)


def widen_state_dict(
    state: dict[str, torch.Tensor], *, noise: float = 0.0, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Widen a full MUGDiT state dict x2; ``noise`` is relative to each tensor's std."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in state.items():
        if name.endswith("_extra_state"):
            continue
        wide = widen_tensor(name, t)
        if noise > 0 and wide.dim() >= 1 and wide.numel() > 1 and not name.endswith(_UNCHANGED):
            scale = float(t.float().std()) * noise
            wide = wide + scale * torch.randn(wide.shape, generator=gen, dtype=torch.float32).to(
                wide.dtype
            )
        out[name] = wide
    return out
