"""MUG-DiT architecture (Megatron-Core parallel layers)."""

from mugv_kernels.attention import PackedText

from mugv_dit.model.dit import MUGDiT, megatron_config
from mugv_dit.model.parallel_context import ParallelContext

__all__ = ["MUGDiT", "PackedText", "ParallelContext", "megatron_config"]
