"""LoRA for MUG-DiT: adapters on Megatron's tensor-parallel linears (:mod:`.adapters`),
folding them into full weights (:mod:`.merge`) and peft adapter folders (:mod:`.peft_files`).

The typed settings (:class:`~mugv_dit.lora.config.LoraConfig`) are the run config's ``lora``
section; the trainer applies them (:func:`~mugv_dit.lora.adapters.apply_lora`) before Megatron's
DDP wraps the model, so only adapters get gradient buffers and optimizer state.
"""

from mugv_dit.lora.config import DEFAULT_TARGETS, LoraConfig

__all__ = ["DEFAULT_TARGETS", "LoraConfig"]
