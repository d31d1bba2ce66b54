"""Typed configuration of mugv-align: mugv-dit's run config plus an ``align`` section.

Precedence: CLI ``--set a.b=value`` > YAML file > defaults (mugv-dit's rules). Every run
writes its resolved config (``resolved_config.yaml``) into its output folder.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal

from mugv_dit.config import RunConfig, expand_preset
from mugv_formats.config_loading import load_config
from pydantic import BaseModel, ConfigDict, Field, model_validator

# every numeric field declares its range; NaN and +-inf are refused everywhere
_STRICT = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
#: relative width of a power-function EMA (EDM2): (0, 0.28), see mugv_align.ema
SigmaRel = Annotated[float, Field(gt=0, lt=0.28)]


class PreferenceSource(BaseModel):
    """One preference set (``mugv.preference-data``) and its share of the steps."""

    model_config = _STRICT

    path: str = Field(..., description="mugv.preference-data folder.")
    weight: float = Field(1.0, gt=0, description="Relative probability of a step drawing here.")


class AlignConfig(BaseModel):
    """Post-training objective, reference model and post-hoc EMA."""

    model_config = _STRICT

    mode: Literal["sft", "dpo", "kto"] = Field("sft", description="Objective of the run.")
    preference: list[PreferenceSource] = Field(
        default_factory=list, description="Preference sets (dpo / kto), interleaved by weight."
    )
    items_per_micro_batch: int = Field(
        1, ge=1, description="Pairs (dpo) or labelled samples (kto) per micro-batch."
    )
    beta: float = Field(
        500.0, gt=0, description="Constant inverse temperature of Flow-DPO / Flow-KTO."
    )
    sft_weight: float = Field(
        0.1,
        ge=0,
        description="Weight of the SFT (flow) loss regulariser on winners (dpo) / desirable "
        "samples (kto).",
    )
    desirable_weight: float = Field(1.0, ge=0, description="KTO weight of desirable samples.")
    undesirable_weight: float = Field(1.0, ge=0, description="KTO weight of undesirable ones.")
    reference: Literal["live", "precomputed"] = Field(
        "live",
        description="live: a frozen copy sharded like the policy runs on each batch; "
        "precomputed: its errors are read from `reference_errors`.",
    )
    reference_from: str | None = Field(
        None, description="mugv.dit-export of the reference model; default train.init_from."
    )
    reference_errors: str | None = Field(
        None, description="File written by `mugv-align precompute-ref` (reference=precomputed)."
    )
    pair_chunking: Literal["joint", "per_sample"] = Field(
        "joint",
        description="dpo / kto: 'joint' runs each micro-batch (a DPO pair: both samples) in "
        "one forward/backward; 'per_sample' runs one sample at a time (the pair's coupling is "
        "through scalar per-sample errors: reference errors and the losers' policy errors "
        "without gradients, then one forward/backward per sample of dL/de * e, winners "
        "first, the same gradient) so that only one sample's activations are alive, at the "
        "cost of one more no-grad forward per pair.",
    )
    ema_sigma_rels: list[SigmaRel] = Field(
        default_factory=lambda: [0.05, 0.10],
        description="Power-function EMAs kept during training (EDM2); [] disables.",
    )
    ema_snapshot_every: int = Field(
        0, ge=0, description="Save EMA snapshots every N steps (0: at checkpoints only)."
    )
    console_every: int = Field(0, ge=0, description="Print metrics every N steps (0: never).")


class AlignRunConfig(RunConfig):
    """Everything a ``mugv-align`` run needs (mugv-dit's RunConfig + ``align``)."""

    align: AlignConfig = Field(default_factory=AlignConfig)
    output_dir: str = "runs/align"

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, raw):
        # post-training keeps power-function EMAs instead of mugv-dit's constant-decay EMA
        if isinstance(raw, dict):
            train = dict(raw.get("train") or {})
            train.setdefault("ema_decay", None)
            raw = {**raw, "train": train}
        return raw

    @model_validator(mode="after")
    def _check_align(self) -> AlignRunConfig:
        a = self.align
        if a.mode != "sft":
            if not a.preference:
                raise ValueError(f"align.mode={a.mode} needs align.preference (a list of sets)")
            if a.reference == "precomputed" and a.reference_errors is None:
                raise ValueError("align.reference=precomputed needs align.reference_errors")
            # with lora the live reference is the base itself (the adapters switched off)
            base_is_ref = self.lora is not None
            if (
                a.reference == "live"
                and a.reference_from is None
                and self.train.init_from is None
                and not base_is_ref
            ):
                raise ValueError(
                    "a live reference needs align.reference_from or train.init_from (an export)"
                )
        if a.pair_chunking == "per_sample" and self.lora is not None and self.lora.dropout:
            raise ValueError(
                f"align.pair_chunking=per_sample with lora.dropout={self.lora.dropout}: the "
                "no-grad and the gradient forward would draw different dropout masks; set "
                "lora.dropout=0 or align.pair_chunking=joint"
            )
        if a.ema_sigma_rels and self.train.ema_decay is not None:
            raise ValueError(
                "set train.ema_decay=null with align.ema_sigma_rels (power EMAs replace it)"
            )
        return self


def resolve_align_config(raw: dict) -> AlignRunConfig:
    """Build an AlignRunConfig from a raw dict, expanding ``preset`` as mugv-dit does."""
    return AlignRunConfig(**expand_preset(raw))


def load_align_config(path: str | Path | None, overrides: Iterable[str] | None = ()):
    """Read a YAML align config and apply ``--set`` overrides (mugv_formats.config_loading:
    list indices, one-line ConfigError naming file, field and value)."""
    return load_config(AlignRunConfig, path, overrides, build=resolve_align_config)
