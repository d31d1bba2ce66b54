"""Typed training configuration (YAML file + dotted CLI overrides; CLI > file > defaults)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from mugv_formats.config_loading import load_config
from pydantic import BaseModel, ConfigDict, Field


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Cfg):
    """The model to train (YAML key ``model``)."""

    preset: str | None = Field("tiny", description="Architecture preset (when no checkpoint).")
    architecture: dict[str, Any] = Field(
        default_factory=dict,
        description="Fields of the architecture (mugv_vae.config.VAEConfig) over the preset's, "
        "e.g. {temporal: {filters: 16}} (when no checkpoint).",
    )
    checkpoint: str | None = Field(None, description="Start from this VAE checkpoint folder.")
    sdxl_vae: str | None = Field(None, description="Local diffusers AutoencoderKL for the trunk.")
    freeze_trunk: bool = Field(False, description="Train only the temporal VAE.")
    fused_group_norm_silu: bool = Field(False, description="Fused Triton GroupNorm+SiLU.")
    gradient_checkpointing: bool = False


class DataConfig(_Cfg):
    """Training data and batching (YAML key ``data``)."""

    clips: str = Field(description="Clip-shard dataset, or a folder of video files.")
    resolution: str = Field("64x64", description="Training crop HxW.")
    frames: int = Field(17, ge=1, description="Frames per video sample (1+8k).")
    batch_size: int = Field(2, ge=1, description="Samples per rank per step.")
    image_ratio: float = Field(
        0.25, ge=0, le=1, description="Share of steps whose batch is single images (T=1)."
    )
    num_workers: int = Field(0, ge=0)
    decoder_windows: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [1, 4, 8], description="Decoder windows R sampled per step."
    )
    max_offset: int = Field(
        16,
        ge=0,
        description="A video sample starts at a random frame in [0, max_offset] of its clip; "
        "0: always at the first frame (the frames a reconstruction from the start is judged on).",
    )
    distinct_clips: bool = Field(
        False,
        description="A batch holds distinct clips (drawn without replacement) where batch_size <= "
        "the number of clips; default: each drawn independently.",
    )
    cache_decoded: bool = Field(
        False,
        description="Decode each clip once and keep its frames in memory (small clip sets, "
        "e.g. the demo's: decoding is then not repeated every step), and each distinct "
        "sample's resized model input (clip, image step, first frame).",
    )
    eval_clips: str | None = Field(None, description="Held-out clips for periodic PSNR.")


class LossConfig(_Cfg):
    """Loss weights and the GAN stage (YAML key ``loss``)."""

    mse: float = Field(1.0, ge=0, allow_inf_nan=False)
    l1: float = Field(1.0, ge=0, allow_inf_nan=False)
    adaptive_l1: float = Field(
        1.0, ge=0, allow_inf_nan=False, description="Strength of the |dt Laplacian| L1 weight."
    )
    perceptual: float = Field(0.1, ge=0, allow_inf_nan=False)
    lpips_weights: str | None = Field(None, description="Local LPIPS weights file.")
    kl: float = Field(1e-6, ge=0, allow_inf_nan=False)
    sample_posterior: bool = Field(
        True,
        description="Decode a sample of the posterior in training (the VAE recipe); false: its "
        "mean, as encode/reconstruction use it (no latent noise; the KL term alone shapes the "
        "variance).",
    )
    gan: float = Field(
        0.05, ge=0, allow_inf_nan=False, description="Generator hinge-loss weight (GAN stage)."
    )
    gan_start_step: int | None = Field(
        None, ge=0, description="Enable the GAN stage from this step."
    )
    disc_channels: int = Field(64, ge=1)
    disc_lr: float = Field(1e-4, gt=0, allow_inf_nan=False)


class OptimConfig(_Cfg):
    """AdamW and its schedule (YAML key ``optim``)."""

    lr: float = Field(1e-4, gt=0, allow_inf_nan=False)
    betas: tuple[
        Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)],
        Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)],
    ] = (0.9, 0.99)
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False)
    warmup_steps: int = Field(0, ge=0)
    lr_decay: Literal["constant", "cosine"] = Field(
        "constant",
        description="After warm-up: keep lr, or cosine-decay it to min_lr at the last step.",
    )
    min_lr: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="Final lr of the cosine decay."
    )
    grad_clip: float = Field(1.0, gt=0, allow_inf_nan=False)


class LatentStatsConfig(_Cfg):
    """Per-channel latent mean/std measured on the training clips and stored in the final
    checkpoint (YAML key ``latent_stats``), as ``mugv-vae stats --write`` does, without a
    second process."""

    resolution: str = Field("64x64", description="HxW the clips are encoded at.")
    frames: int = Field(17, ge=1, description="Frames per clip encoded (1+8k).")
    max_clips: int = Field(256, ge=1)


class TrainConfig(_Cfg):
    """Everything one training run needs; written to ``<output>/resolved_config.yaml``."""

    output: str = Field(description="Run folder: checkpoints, TensorBoard logs, final export.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    steps: int = Field(100, ge=1)
    seed: int = Field(0, ge=0)
    ema_decay: float = Field(0.999, ge=0, le=1, allow_inf_nan=False)
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="auto: bf16 autocast on GPU, float32 on CPU."
    )
    parallel: Literal["auto", "none", "ddp", "fsdp2"] = "auto"
    device: str | None = None
    log_every: int = Field(10, ge=1)
    image_every: int = Field(100, ge=0, description="0: no image logs.")
    checkpoint_every: int = Field(100, ge=1)
    eval_every: int = Field(0, ge=0, description="0: no periodic evaluation.")
    keep_checkpoints: int = Field(2, ge=0, description="0: keep every checkpoint.")
    save_final: bool = Field(True, description="Write a checkpoint after the last step.")
    latent_stats: LatentStatsConfig | None = Field(
        None,
        description="Measure the latents' per-channel mean/std on data.clips with the final "
        "weights and store them in the final checkpoint (null: mean 0 / std 1 kept).",
    )
    max_seconds: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="Stop (cleanly, as after the last step) once this much time passed.",
    )


def load_train_config(path: str | Path | None, overrides: Iterable[str] | None = ()) -> TrainConfig:
    """Read a YAML config and apply ``--set KEY=VALUE`` overrides (mugv_formats.config_loading:
    values read as YAML, list indices, one-line ConfigError naming file, field and value)."""
    return load_config(TrainConfig, path, overrides)
