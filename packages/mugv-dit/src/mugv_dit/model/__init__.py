"""MUG-DiT architecture (Megatron-Core parallel layers)."""

from mugv_dit.model.attention import PackedText
from mugv_dit.model.dit import MUGDiT, megatron_config

__all__ = ["MUGDiT", "PackedText", "megatron_config"]
