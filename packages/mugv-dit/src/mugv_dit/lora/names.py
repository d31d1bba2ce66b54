"""What marks a LoRA adapter, without Megatron: its parameter names and the adapter-copy flag.

Readers and writers of plain state dicts and exports (:mod:`mugv_dit.interop.export`,
:mod:`mugv_dit.lora.merge`, mugv-align's EMA snapshots) need only these; the adapters
themselves (:mod:`mugv_dit.lora.adapters`, which re-exports these names) run on Megatron's
tensor-parallel linears, so importing them imports ``megatron.core``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

#: suffixes of adapter parameter names (``<linear>.lora_A`` / ``<linear>.lora_B``)
ADAPTER_SUFFIXES = (".lora_A", ".lora_B")

#: set on :func:`mugv_dit.lora.adapters.adapter_copy`'s result: its base tensors are another
#: model's, not its own to save
ADAPTER_COPY_ATTR = "_mugv_adapter_copy"


def is_adapter_name(name: str) -> bool:
    """Whether a parameter / state-dict name is a LoRA adapter's."""
    return name.endswith(ADAPTER_SUFFIXES)


def holds_only_adapters(module: nn.Module) -> bool:
    """Whether ``module`` is (or holds) an :func:`~mugv_dit.lora.adapters.adapter_copy`: a
    model whose only own tensors are its adapters. Its checkpoint slot and snapshots keep those
    alone (the base is the run's frozen base, saved once in the model slot / named by
    ``train.init_from``)."""
    return any(getattr(m, ADAPTER_COPY_ATTR, False) for m in module.modules())
