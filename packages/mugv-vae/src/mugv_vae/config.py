"""Typed configuration of the mugv video VAE architecture, with named presets.

The architecture is a 2D image-VAE trunk (diffusers ``AutoencoderKL`` blocks, cut at the
feature map at H/8) followed by a conv-only temporal VAE that compresses 8 frames of trunk
features into one latent. Presets:

- ``tiny``: a few channels everywhere, runs on a CPU in milliseconds (tests, demos).
- ``mugv``: the released MUG-V architecture (SDXL-VAE trunk, 512-channel features,
  temporal VAE with 128 filters, multipliers 1,2,2,4, four res-blocks per stage).
- ``unified`` / ``unified-tiny``: the report's unified variant (no separate trunk; 2D and 3D
  res-blocks alternate in each down-sampling stage).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

TIME_COMPRESSION = 8
"""Frames per latent (time compression factor). Fixed by the architecture."""

SPATIAL_COMPRESSION = 8
"""Pixels per latent along height and width. Fixed by the architecture."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrunkConfig(_Frozen):
    """2D image-VAE trunk: diffusers ``AutoencoderKL`` encoder/decoder blocks.

    The encoder runs ``conv_in -> down_blocks -> mid_block`` and stops at the
    ``block_out_channels[-1]``-channel feature map at H/8; the decoder enters at its
    ``mid_block``. The image VAE's own 4-channel bottleneck is not used.
    """

    block_out_channels: tuple[int, ...] = Field(
        (128, 256, 512, 512), description="Channels of each down/up block (SDXL VAE)."
    )
    layers_per_block: int = Field(2, ge=1, description="Res-blocks per encoder block.")
    norm_num_groups: int = Field(32, ge=1, description="GroupNorm groups in the trunk.")
    mid_block_add_attention: bool = Field(
        True, description="Self-attention in the mid blocks (SDXL VAE: yes)."
    )
    feature_scale: float = Field(
        0.18215,
        gt=0,
        description="Trunk features are multiplied by this before the temporal VAE and divided "
        "by it before the trunk decoder (the released model's constant).",
    )

    @model_validator(mode="after")
    def _check(self) -> TrunkConfig:
        if len(self.block_out_channels) != 4:
            raise ValueError(
                f"trunk.block_out_channels must have 4 entries (3 spatial down-samplings -> H/8), "
                f"got {self.block_out_channels}"
            )
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(
                    f"trunk.block_out_channels entry {c} is not divisible by "
                    f"norm_num_groups={self.norm_num_groups}"
                )
        return self

    @property
    def feature_channels(self) -> int:
        """Channels of the H/8 feature map handed to the temporal VAE."""
        return self.block_out_channels[-1]


class TemporalConfig(_Frozen):
    """Conv-only temporal VAE over trunk features (8 frames -> 1 latent).

    Encoder: conv -> ``len(channel_multipliers)`` stages of res-blocks, a stride-2 time
    down-sampling after every stage but the last -> res-blocks -> GroupNorm+SiLU -> 1x1x1 conv
    to mean and log-variance. Decoder mirrors it; its first time up-sampling is nearest
    repetition followed by a res-block, the others are convolutions followed by
    depth-to-space in time. Time padding is symmetric zeros (``(k-1)/2`` on each side for
    stride 1; one trailing zero frame for the stride-2 down-samplings).
    """

    filters: int = Field(128, ge=1, description="Base channel count.")
    channel_multipliers: tuple[int, ...] = Field((1, 2, 2, 4), description="Per-stage widths.")
    num_res_blocks: int = Field(4, ge=1, description="Res-blocks per stage.")
    num_groups: int = Field(32, ge=1, description="GroupNorm groups.")
    norm_eps: float = Field(1e-5, gt=0, description="GroupNorm epsilon.")

    @model_validator(mode="after")
    def _check(self) -> TemporalConfig:
        if len(self.channel_multipliers) != 4:
            raise ValueError(
                "temporal.channel_multipliers must have 4 entries (three stride-2 time "
                f"down-samplings -> 8x), got {self.channel_multipliers}"
            )
        for m in self.channel_multipliers:
            if (self.filters * m) % self.num_groups:
                raise ValueError(
                    f"temporal width filters*{m}={self.filters * m} is not divisible by "
                    f"num_groups={self.num_groups}"
                )
        return self


class UnifiedConfig(_Frozen):
    """Unified variant: no image trunk; 2D (1x3x3) and 3D (3x3x3) res-blocks alternate in
    every stage, and the first three stages each down-sample T, H and W by 2."""

    channels: tuple[int, ...] = Field((128, 256, 512, 512), description="Per-stage widths.")
    pairs_per_stage: int = Field(2, ge=1, description="(2D block, 3D block) pairs per stage.")
    num_groups: int = Field(32, ge=1, description="GroupNorm groups.")

    @model_validator(mode="after")
    def _check(self) -> UnifiedConfig:
        if len(self.channels) != 4:
            raise ValueError(f"unified.channels must have 4 entries (8x8x8), got {self.channels}")
        for c in self.channels:
            if c % self.num_groups:
                raise ValueError(
                    f"unified width {c} is not divisible by num_groups={self.num_groups}"
                )
        return self


class VAEConfig(_Frozen):
    """Architecture of the mugv video VAE: what defines its weights, and all that a checkpoint's
    ``config.json`` holds. How the model runs (kernels, layouts, memory) is :class:`VAERuntime`,
    chosen when a model is built or loaded."""

    trunk: TrunkConfig = Field(default_factory=TrunkConfig)
    temporal: TemporalConfig = Field(default_factory=TemporalConfig)
    latent_channels: int = Field(24, ge=1, description="Channels of each latent.")
    in_channels: int = Field(3, description="Video channels (RGB).")
    variant: Literal["mugv", "unified"] = Field(
        "mugv",
        description="'mugv': the released image trunk + temporal VAE (uses trunk/temporal); "
        "'unified': one 2D/3D-alternating encoder/decoder over pixels (uses unified).",
    )
    unified: UnifiedConfig = Field(default_factory=UnifiedConfig)


class VAERuntime(_Frozen):
    """How a VAE runs: kernels, memory layouts, compilation, memory budget. None of these
    change the weights (or, up to rounding, the maths); they are chosen at build / load time
    (``MUGVAE(config, runtime)``, ``MUGVAE.from_pretrained(path, runtime=...)``) and never stored in a
    checkpoint."""

    fused_group_norm_silu: bool = Field(
        False,
        description="Use mugv_kernels.group_norm_silu (fused Triton GroupNorm+SiLU) in the "
        "trunk's res-blocks and the temporal VAE instead of the PyTorch ops. Same weights, "
        "same maths.",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute block activations in the backward pass (training)."
    )
    channels_last: bool = Field(
        False,
        description="Run convolutions channels-last (NHWC in the trunk, NDHWC in the temporal "
        "VAE): cuDNN's fast layouts for bf16 on GPUs. Same weights and maths.",
    )
    fused_nhwc_ops: bool = Field(
        False,
        description="Inference on CUDA channels-last activations: the VAE's own Triton "
        "GroupNorm+SiLU (the preceding conv's bias folded in) and bias+residual kernels "
        "(mugv_vae.model.nhwc_ops). Other cases fall back to the usual path. Same maths.",
    )
    fold_upsample_conv: bool = Field(
        False,
        description="Inference: run each trunk decoder up-sampling (nearest 2x + 3x3 conv) as "
        "one 2x2 conv with 4x outputs on the small input (2.25x fewer FLOPs, no up-sampled "
        "copy). Same function; the summed taps round once more in bf16.",
    )
    compile_trunk: bool = Field(
        False,
        description="torch.compile the per-frame trunk encode/decode (CUDA inputs only; CPU "
        "stays eager). First calls at a new shape pay the compile time.",
    )
    max_activation_bytes: int | None = Field(
        None,
        ge=1,
        description="Activation memory budget of encode/decode: frame micro-batches and "
        "chunk/window groups are sized from it (weights, input and output not included). "
        "Explicit frame_batch_size / chunk_batch_size on the model win. None: no limit.",
    )


def tiny_config() -> VAEConfig:
    """A few channels everywhere: CPU tests and demos. Not meant to be good."""
    return VAEConfig(
        trunk=TrunkConfig(
            block_out_channels=(8, 8, 16, 16),
            layers_per_block=1,
            norm_num_groups=4,
            mid_block_add_attention=True,
        ),
        temporal=TemporalConfig(
            filters=8, channel_multipliers=(1, 2, 2, 2), num_res_blocks=1, num_groups=4
        ),
        latent_channels=24,
    )


def mugv_config() -> VAEConfig:
    """The released MUG-V VAE architecture (weight-compatible with the original ``vae.pt``)."""
    return VAEConfig()


def unified_config() -> VAEConfig:
    """The report's unified variant (2D and 3D convolutions alternating in each stage)."""
    return VAEConfig(variant="unified")


def unified_tiny_config() -> VAEConfig:
    """Unified variant with a few channels (CPU tests)."""
    return VAEConfig(
        variant="unified",
        unified=UnifiedConfig(channels=(8, 8, 16, 16), pairs_per_stage=1, num_groups=4),
    )


PRESETS = {
    "tiny": tiny_config,
    "mugv": mugv_config,
    "unified": unified_config,
    "unified-tiny": unified_tiny_config,
}


def with_architecture(config: VAEConfig, changes: dict) -> VAEConfig:
    """``config`` with ``changes`` merged in, section by section (``{"temporal": {"filters":
    16}}`` keeps the other temporal fields); validated like any config."""

    def merge(base: dict, new: dict) -> dict:
        out = dict(base)
        for k, v in new.items():
            out[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        return out

    return VAEConfig.model_validate(merge(config.model_dump(), changes)) if changes else config


def preset(name: str) -> VAEConfig:
    """Return the named preset; ``ValueError`` naming the choices otherwise."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown VAE preset {name!r}; choose one of {sorted(PRESETS)}") from None
