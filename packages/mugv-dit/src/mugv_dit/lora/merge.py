"""Fold LoRA adapters into full weights: ``W <- W + (alpha / r) B A``.

Pure functions on full (TP=1) state dicts under mugv-dit's names (``<linear>.weight``,
``<linear>.lora_A`` ``[r, in]``, ``<linear>.lora_B`` ``[out, r]``): what ``mugv-dit export
--merge-lora`` writes is a plain ``mugv.dit-export`` that any reader of the format loads.
"""

from __future__ import annotations

import torch

from mugv_dit.lora.names import is_adapter_name


def adapter_bases(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the adapted linears in a full state dict (``X`` for ``X.lora_A``)."""
    return sorted(k[: -len(".lora_A")] for k in state if k.endswith(".lora_A"))


def merge_lora_state(state: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """A copy of ``state`` with every adapter folded into its linear's weight (computed in
    float32 or wider, stored in the weight's dtype) and the adapter entries removed."""
    out = {k: v for k, v in state.items() if not is_adapter_name(k)}
    for base in adapter_bases(state):
        missing = [k for k in (f"{base}.weight", f"{base}.lora_B") if k not in state]
        if missing:
            raise ValueError(f"adapter {base}.lora_A without {missing[0]}")
        w, a, b = state[f"{base}.weight"], state[f"{base}.lora_A"], state[f"{base}.lora_B"]
        if (b.shape[0], a.shape[1]) != tuple(w.shape) or b.shape[1] != a.shape[0]:
            raise ValueError(
                f"{base}: adapter B {tuple(b.shape)} x A {tuple(a.shape)} does not fit weight "
                f"{tuple(w.shape)}"
            )
        acc = torch.promote_types(w.dtype, torch.float32)
        merged = w.to(acc) + scale * (b.to(acc) @ a.to(acc))
        out[f"{base}.weight"] = merged.to(w.dtype)
    return out
