"""Architecture presets of MUG-DiT (the sizes mugv-dit trains; DESIGN.md "DiT")."""

from __future__ import annotations

PRESETS: dict[str, dict] = {
    "debug": {"hidden_size": 48, "num_heads": 4, "num_layers": 2, "text_dim": 32},
    "1b": {"hidden_size": 1152, "num_heads": 16, "num_layers": 56, "text_dim": 4096},
    "2b": {"hidden_size": 1728, "num_heads": 24, "num_layers": 56, "text_dim": 4096},
    "4b": {"hidden_size": 2304, "num_heads": 32, "num_layers": 56, "text_dim": 4096},
    "10b": {
        "hidden_size": 3456,
        "num_heads": 48,
        "num_layers": 56,
        "ffn_hidden_size": 13824,
        "text_dim": 4096,
    },
}


def preset(name: str, **overrides) -> dict:
    """Config kwargs of :class:`MUGDiTTransformer3DModel` for a named size."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
    return {**PRESETS[name], **overrides}
