"""Typed LoRA settings of a run (``lora:`` in a mugv-dit / mugv-align run config).

Kept free of Megatron imports: :mod:`mugv_dit.config` imports it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: the parallel linears of a DiT block a LoRA may adapt, by their name inside the block
BLOCK_LINEARS = (
    "self_attention.qkv",
    "self_attention.proj",
    "cross_attention.q",
    "cross_attention.kv",
    "cross_attention.proj",
    "mlp.fc1",
    "mlp.fc2",
)
#: default targets: attention (self + cross) and FFN, as peft's ``target_modules`` suffixes
DEFAULT_TARGETS = ("qkv", "proj", "q", "kv", "fc1", "fc2")


class LoraConfig(BaseModel):
    """Low-rank adapters ``W x + (alpha / rank) B A x`` on the blocks' parallel linears
    (``B`` starts at zero: step 0 is the base model). Only the adapters train; the base
    stays frozen in the run's dtype."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    rank: int = Field(16, ge=1, description="Rank r of every adapter.")
    alpha: float = Field(16.0, gt=0, description="Scale numerator: the update is alpha / r * B A.")
    targets: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TARGETS),
        min_length=1,
        description="Block linears to adapt, matched as peft's target_modules: a name matches "
        "when it equals a target or ends with '.' + target ('proj' adapts self- and "
        "cross-attention outputs, 'self_attention.proj' only the first). Linears: "
        + ", ".join(BLOCK_LINEARS)
        + ".",
    )
    dropout: float = Field(
        0.0, ge=0, lt=1, description="Dropout on the adapter input (training only; TP=1)."
    )
    dtype: Literal["model", "float32", "bfloat16"] = Field(
        "model",
        description="Adapter parameter dtype: 'model' = the run's compute dtype (bf16 on GPU); "
        "float32 keeps the adapters (and their grads) in fp32 under a bf16 base.",
    )
    seed: int = Field(0, ge=0, description="Seed of the A matrices (TP-independent draw).")

    @model_validator(mode="after")
    def _check(self) -> LoraConfig:
        for t in self.targets:
            if not any(name == t or name.endswith("." + t) for name in BLOCK_LINEARS):
                raise ValueError(
                    f"lora.targets: {t!r} matches no block linear; choose from "
                    f"{', '.join(BLOCK_LINEARS)} (or a suffix such as 'proj')"
                )
        return self

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def targets_linear(self, name_in_block: str) -> bool:
        """Whether the block linear ``name_in_block`` (e.g. ``mlp.fc1``) is adapted."""
        return any(name_in_block == t or name_in_block.endswith("." + t) for t in self.targets)
