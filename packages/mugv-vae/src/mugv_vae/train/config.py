"""Typed training configuration (YAML file + dotted CLI overrides; CLI > file > defaults)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from mugv_formats.config_loading import load_config
from pydantic import BaseModel, ConfigDict, Field


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Cfg):
    """The model to train (YAML key ``model``)."""

    preset: str | None = Field("tiny", description="Architecture preset (when no checkpoint).")
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
    decoder_windows: list[int] = Field(
        default_factory=lambda: [1, 4, 8], description="Decoder windows R sampled per step."
    )
    eval_clips: str | None = Field(None, description="Held-out clips for periodic PSNR.")


class LossConfig(_Cfg):
    """Loss weights and the GAN stage (YAML key ``loss``)."""

    mse: float = 1.0
    l1: float = 1.0
    adaptive_l1: float = Field(1.0, description="Strength of the |dt Laplacian| L1 weight.")
    perceptual: float = 0.1
    lpips_weights: str | None = Field(None, description="Local LPIPS weights file.")
    kl: float = 1e-6
    gan: float = Field(0.05, description="Generator hinge-loss weight in the GAN stage.")
    gan_start_step: int | None = Field(None, description="Enable the GAN stage from this step.")
    disc_channels: int = 64
    disc_lr: float = 1e-4


class OptimConfig(_Cfg):
    """AdamW and its schedule (YAML key ``optim``)."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0


class TrainConfig(_Cfg):
    """Everything one training run needs; written to ``<output>/resolved_config.yaml``."""

    output: str = Field(description="Run folder: checkpoints, TensorBoard logs, final export.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    steps: int = Field(100, ge=1)
    seed: int = 0
    ema_decay: float = 0.999
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="auto: bf16 autocast on GPU, float32 on CPU."
    )
    parallel: Literal["auto", "none", "ddp", "fsdp2"] = "auto"
    device: str | None = None
    log_every: int = 10
    image_every: int = 100
    checkpoint_every: int = 100
    eval_every: int = 0
    keep_checkpoints: int = 2
    save_final: bool = Field(True, description="Write a checkpoint after the last step.")
    max_seconds: float | None = Field(
        None, description="Stop (cleanly, as after the last step) once this much time passed."
    )


def load_train_config(path: str | Path | None, overrides: Iterable[str] | None = ()) -> TrainConfig:
    """Read a YAML config and apply ``--set KEY=VALUE`` overrides (mugv_formats.config_loading:
    values read as YAML, list indices, one-line ConfigError naming file, field and value)."""
    return load_config(TrainConfig, path, overrides)
