"""Typed configuration of mugv-dit: model presets, objective, data, parallelism, training.

Precedence: CLI ``--set a.b=value`` > YAML file > defaults. Every run writes its resolved
config (``resolved_config.yaml``) next to its outputs.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal

from mugv_formats.config_loading import dump_config as dump_config  # re-exported
from mugv_formats.config_loading import load_config as load_typed_config
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mugv_dit.lora.config import LoraConfig

# every numeric field declares its range; NaN and +-inf are refused everywhere
_STRICT = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
#: a task's sampling weight
TaskWeight = Annotated[float, Field(ge=0)]


class ModelConfig(BaseModel):
    """Architecture of MUG-DiT (see DESIGN.md, "DiT"): what defines the weights, and what a
    ``mugv.dit-export`` carries. How a model runs is :class:`RuntimeConfig`."""

    model_config = _STRICT

    hidden_size: int = Field(48, ge=1, description="Transformer width.")
    num_layers: int = Field(2, ge=1, description="Number of DiT blocks.")
    num_heads: int = Field(4, ge=1, description="Attention heads; head_dim = hidden/heads.")
    ffn_hidden_size: int | None = Field(None, ge=1, description="MLP width; default 4 * hidden.")
    in_channels: int = Field(24, ge=1, description="Latent channels of the VAE.")
    learn_sigma: bool = Field(
        True, description="Output 2 * in_channels (as the original); the loss uses the first half."
    )
    patch_size: tuple[
        Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]
    ] = Field((1, 2, 2), description="(t, h, w) patch size.")
    text_dim: int = Field(
        4096, ge=1, description="Width of the text-encoder features (T5-XXL: 4096)."
    )
    null_text_tokens: int = Field(
        1, ge=1, description="Length of the learned null caption used for caption dropout."
    )
    freq_embed_dim: int = Field(
        256, ge=2, description="Sinusoidal width of timestep / fps embeddings."
    )
    timestep_scale: float = Field(
        1000.0, gt=0, description="Noise level s in [0,1] is embedded as s * timestep_scale."
    )
    rope_theta: float = Field(10000.0, gt=1, description="RoPE base.")
    norm_eps: float = Field(1e-6, gt=0, description="Epsilon of every LayerNorm / RMSNorm.")
    init_std: float = Field(0.02, ge=0, description="Std of the normal init of linear weights.")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def ffn_size(self) -> int:
        return self.ffn_hidden_size or 4 * self.hidden_size

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.hidden_size={self.hidden_size} not divisible by num_heads={self.num_heads}"
            )
        if self.head_dim % 6:
            raise ValueError(
                f"model head_dim={self.head_dim} must be divisible by 6 (3D RoPE: h/w/t pairs)"
            )
        return self


class RuntimeConfig(BaseModel):
    """How a MUG-DiT runs: chosen when a model is built, not stored with its weights (an
    export made with one setting loads under any other)."""

    model_config = _STRICT

    attention_backend: Literal["auto", "sdpa", "flash", "fa4"] = Field(
        "auto",
        description="sdpa: torch SDPA; flash: flash-attn 2; fa4: FlashAttention-4 (flash-attn-4, "
        "head dims padded to an exact one, 72 -> 96); auto: fa4 on Hopper when it imports and "
        "passes a start-up self-check, else flash-attn 2 when installed, else SDPA.",
    )
    recompute: Literal["none", "selective", "full"] = Field(
        "none",
        description="Activation recompute: 'selective' re-runs each block's MLP (its two "
        "FFN-wide activations are the largest), 'full' re-runs each whole block in backward.",
    )
    fused_ops: bool = Field(
        False,
        description="Use mugv_kernels fused ops (modulated LN, gated residual, QK-norm+RoPE).",
    )
    fused_ln_linear: Literal["off", "auto", "on"] = Field(
        "auto",
        description="Hand the modulated LayerNorm of the qkv and fc1 inputs to those linears "
        "(mugv_kernels.ln_linear), which keep only x and 8 bytes per token for the backward "
        "instead of the normalised activation (-1 activation of [tokens, hidden] each). auto "
        "(default): on CUDA with fused_ops (with ln_linear_method=recompute: 0.999x the step, "
        "1 GiB less peak, loss 2.8e-6 relative from off at 1728 x 8 @ 12.9k on an H100, "
        "2026-12-07); on: everywhere (off CUDA the unfused reference inside the same "
        "plumbing: tests); off: never. Plain linears only (one TP rank, no sequence "
        "parallelism, no enabled LoRA adapter); elsewhere the unfused path runs.",
    )
    ln_linear_method: Literal["recompute", "fused"] = Field(
        "recompute",
        description="With fused_ln_linear: 'recompute' = modulated-LN kernel + cuBLAS, the "
        "normalised activation dropped after the forward and recomputed in the backward; "
        "'fused' = the norm inside Triton GEMMs' prologue (never written; its GEMMs 3x slower "
        "than cuBLAS on an H100, the step 0.77x: docs/benchmarks/kernels/).",
    )


#: Fields of RuntimeConfig that ModelConfig held before (run configs and exports then).
LEGACY_MODEL_RUNTIME_FIELDS = tuple(
    f  # fields added after the split are not legacy ones
    for f in RuntimeConfig.model_fields
    if f not in ("fused_ln_linear", "ln_linear_method")
)


def _preset(hidden: int, heads: int, ffn: int | None = None, layers: int = 56) -> dict:
    return {
        "hidden_size": hidden,
        "num_heads": heads,
        "num_layers": layers,
        "ffn_hidden_size": ffn or 4 * hidden,
        "text_dim": 4096,
    }


MODEL_PRESETS: dict[str, dict] = {
    "debug": {"hidden_size": 48, "num_heads": 4, "num_layers": 2, "text_dim": 32},
    "1b": _preset(1152, 16),
    "2b": _preset(1728, 24),
    "4b": _preset(2304, 32),
    "10b": _preset(3456, 48, 13824),
    "18b": _preset(4608, 64),
}


def model_preset(name: str, **overrides) -> ModelConfig:
    """Model config of a named preset (``debug``, ``1b``, ``2b``, ``4b``, ``10b``, ``18b``)."""
    if name not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose from {sorted(MODEL_PRESETS)}")
    return ModelConfig(**{**MODEL_PRESETS[name], **overrides})


class ObjectiveConfig(BaseModel):
    """Rectified-flow objective and conditioning tasks."""

    model_config = _STRICT

    logit_normal_mean: float = Field(0.0, description="Mean of the logit-normal noise level.")
    logit_normal_std: float = Field(1.0, gt=0, description="Std of the logit-normal noise level.")
    shift_by_resolution: bool = Field(
        True, description="Shift s by ratio = sqrt(H*W/512^2) * sqrt(T_latent)."
    )
    base_resolution: int = Field(512 * 512, ge=1, description="Pixel area with no shift.")
    task_ratios: dict[str, TaskWeight] = Field(
        default_factory=lambda: {"t2v": 1.0},
        description="Sampling weights of tasks t2v / i2v / continuation (images are always t2i).",
    )
    continuation_max_frames: int = Field(
        2, ge=1, description="Continuation conditions on 1..this many leading latent frames."
    )
    caption_dropout: float = Field(0.1, ge=0, le=1, description="Probability of the null caption.")

    @model_validator(mode="after")
    def _check(self) -> ObjectiveConfig:
        bad = set(self.task_ratios) - {"t2v", "i2v", "continuation"}
        if bad:
            raise ValueError(f"objective.task_ratios: unknown tasks {sorted(bad)}")
        if not self.task_ratios or sum(self.task_ratios.values()) <= 0:
            raise ValueError(f"objective.task_ratios must have a positive sum: {self.task_ratios}")
        return self


class DataConfig(BaseModel):
    """Latent-shard input."""

    model_config = _STRICT

    path: str | None = Field(None, description="Latent dataset directory (mugv.latent-shards).")
    loader: Literal["plan", "energon"] = Field(
        "plan",
        description="plan: layout-independent bucketed step plans (same batches for any TP/DP); "
        "energon: megatron-energon stream per DP rank with savable state.",
    )
    tokens_per_batch: int = Field(
        4096, ge=1, description="Token budget of one micro-batch per DP rank (video tokens)."
    )
    max_batch_size: int = Field(64, ge=1, description="Upper bound on samples per micro-batch.")
    weighted_sampling: bool = Field(
        True,
        description="Draw samples by their sample_weight (mugv-data's balanced-sampling "
        "weight, carried by the latent records) when the weights differ: each sample's share "
        "of the draws is its weight over the total; buckets, token budgets and exact resume "
        "are kept. Equal weights (or false) draw uniformly, epoch by epoch.",
    )
    num_workers: int = Field(0, ge=0, description="Loader worker processes.")
    seed: int = Field(1234, ge=0, description="Seed of the step plans / loader order.")
    vae_checkpoint_id: str | None = Field(
        None,
        description="Id of the VAE the latents must come from (the dataset header's "
        "vae_checkpoint_id); a dataset made by another VAE is refused. None: any, but a "
        "resumed run still refuses a dataset whose VAE differs from the one it started on.",
    )


class PlateauConfig(BaseModel):
    """When a curriculum stage ends early: after ``patience`` validations in a row that did
    not improve the stage's best validation loss by more than ``min_delta``."""

    model_config = _STRICT

    patience: int = Field(3, ge=1, description="Validations without improvement that end it.")
    min_delta: float = Field(
        0.0, ge=0, description="An improvement counts only when larger than this."
    )


class ValidationConfig(BaseModel):
    """Held-out validation (mugv_dit.validation): the flow loss of a latent set at fixed
    noise and fixed noise levels, so two evaluations of the same weights agree exactly."""

    model_config = _STRICT

    path: str | None = Field(
        None, description="Held-out latent dataset (mugv.latent-shards); None: no validation."
    )
    every_steps: int = Field(500, ge=1, description="Validate after every N optimizer steps.")
    max_samples: int = Field(
        64, ge=1, description="Evaluate the first N samples of the set (manifest order)."
    )
    noise_levels: int = Field(
        8,
        ge=1,
        description="Noise levels per sample: the K quantiles (k + 0.5) / K of the training "
        "logit-normal, with the training resolution shift applied.",
    )
    tasks: list[Literal["t2v", "i2v", "continuation"]] | None = Field(
        None,
        description="Tasks video samples are evaluated under (cycled over samples and "
        "levels); None: those with a positive ratio in objective.task_ratios or a stage's.",
    )
    seed: int = Field(0, ge=0, description="Seed of the fixed validation noise.")


class SamplesConfig(BaseModel):
    """Samples during training (mugv_dit.samples): every ``every_steps`` steps the trainer
    writes its weights as a ``mugv.dit-export`` under ``OUTPUT/samples/exports/step_N``
    with these prompts and seeds; ``mugv eval watch OUTPUT`` (package ``mugv``) renders them
    to mp4 and TensorBoard video."""

    model_config = _STRICT

    every_steps: int = Field(0, ge=0, description="Write a sample export every N steps; 0: off.")
    weights: Literal["auto", "ema", "model"] = Field(
        "auto", description="Which weights: auto = the EMA when the run keeps one (train."
        "ema_decay), else the model's.",
    )  # fmt: skip
    keep: int = Field(
        2, ge=0, description="Keep the newest N sample exports (0: all); older ones are removed."
    )
    prompts: list[str] = Field(default_factory=list, description="The fixed prompts.")
    seeds: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=lambda: [0], description="Each prompt is rendered once per seed."
    )
    height: int = Field(256, ge=8, description="Rendered height (pixels, a multiple of 16).")
    width: int = Field(256, ge=8, description="Rendered width (pixels, a multiple of 16).")
    num_frames: int = Field(
        17, ge=1, description="Rendered frames (1 + 8k for the 8x8x8 VAE; 1: an image)."
    )
    fps: float = Field(24.0, gt=0, description="Frame rate of the renders.")
    inference_steps: int = Field(25, ge=1, description="Sampler steps.")
    guidance_scale: float = Field(4.0, ge=0, description="Classifier-free guidance scale.")

    @model_validator(mode="after")
    def _check(self) -> SamplesConfig:
        if self.every_steps and not self.prompts:
            raise ValueError("samples.every_steps is set: give samples.prompts (at least one)")
        if self.every_steps and not self.seeds:
            raise ValueError("samples.seeds is empty: give at least one seed")
        return self


class StageConfig(BaseModel):
    """One curriculum stage: what data it trains on, how long, and its LR schedule."""

    model_config = _STRICT

    name: str
    steps: int = Field(..., gt=0)
    max_height: int | None = Field(
        None, ge=1, description="Keep samples at most this tall (pixels)."
    )
    max_frames: int | None = Field(
        None, ge=1, description="Keep samples at most this long (frames)."
    )
    min_frames: int | None = Field(None, ge=1, description="Keep samples at least this long.")
    image_share_start: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Share of image (1-frame) samples at the stage start; None = natural.",
    )
    image_share_end: float | None = Field(
        None, ge=0, le=1, description="Share at the stage end (annealed)."
    )
    task_ratios: dict[str, TaskWeight] | None = Field(
        None, description="Overrides objective.task_ratios in this stage."
    )
    lr: float = Field(1e-4, gt=0, description="Peak learning rate of the stage.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps from 0 to lr.")
    lr_decay: Literal["constant", "cosine", "linear"] = "constant"
    min_lr: float = Field(0.0, ge=0, description="Learning rate at the end of a decay.")
    advance_on_plateau: PlateauConfig | None = Field(
        None,
        description="End the stage early once validation stops improving (needs "
        "validation.path); the decision is logged.",
    )

    @model_validator(mode="after")
    def _check(self) -> StageConfig:
        if self.min_frames and self.max_frames and self.min_frames > self.max_frames:
            raise ValueError(
                f"stage {self.name!r}: min_frames={self.min_frames} > max_frames={self.max_frames}"
            )
        return self


class ParallelConfig(BaseModel):
    """Megatron-Core parallel layout."""

    model_config = _STRICT

    tensor_parallel: int = Field(1, ge=1, description="Tensor-parallel ranks (heads, FFN).")
    sequence_parallel: bool = Field(
        False, description="Shard tokens over TP ranks outside attention/MLP (TP > 1)."
    )
    pipeline_parallel: int = Field(
        1,
        ge=1,
        description="Pipeline stages (Megatron 1F1B schedule over the step's micro-batches); "
        "model.num_layers must be divisible by it.",
    )
    context_parallel: int = Field(
        1,
        ge=1,
        description="All-to-all (Ulysses) sequence parallelism: tokens sharded over this many "
        "ranks, heads exchanged around self-attention; heads divisible by TP x this.",
    )
    distributed_optimizer: bool = True
    overlap_grad_reduce: bool = False
    overlap_param_gather: bool = False
    backend: Literal["auto", "nccl", "gloo"] = "auto"


class TrainConfig(BaseModel):
    """Optimisation and run control."""

    model_config = _STRICT

    seed: int = Field(42, ge=0, description="Seed of the model init and the noise draws.")
    bf16: bool = Field(True, description="bf16 params/compute on GPU (always fp32 on CPU).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay.")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="Adam first-moment decay.")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="Adam second-moment decay.")
    adam_eps: float = Field(1e-8, gt=0, description="Adam epsilon.")
    clip_grad: float = Field(1.0, ge=0, description="Clip the grad norm to this; 0: no clipping.")
    fused_adam: bool = Field(
        True,
        description="torch's fused AdamW kernel for the fp32 main params (same update rule as "
        "the foreach path Megatron picks without apex/transformer-engine, one kernel); CUDA, "
        "and the CPU where torch has it.",
    )
    sync_free_step: bool = Field(
        True,
        description="With fused_adam: the optimizer step through SyncFreeStep, a wrapper "
        "around Megatron's optimizer with its per-parameter lists built once and no host sync "
        "(grad norm, clipping and the non-finite check on the device, inside the "
        "fused kernel; a NaN/Inf grad norm leaves weights and moments untouched). Falls back "
        "to Megatron's step where it does not apply (mugv_dit.optim.sync_free_step.why_not).",
    )
    cuda_graph: bool | Literal["auto"] = Field(
        "auto",
        description="Replay forward + backward + grad reduction as CUDA graphs, one per step "
        "layout (mugv_dit.optim.graphed_forward_backward); the optimizer stays eager. Steps "
        "with a dropped caption run eagerly; a failed capture falls back to eager with a "
        "warning. auto (default): graphs on one CUDA device without TP/PP/CP, full recompute "
        "or LoRA (bit-equal to eager and not slower on an H100, 2026-12-07), eager elsewhere "
        "(the reason logged once on CUDA, silent on the CPU); true: also with data "
        "parallelism (not verified on GPUs yet); false: eager.",
    )
    ema_decay: float | None = Field(
        0.9999, ge=0, lt=1, description="EMA of the weights; None disables."
    )
    nonfinite: Literal["skip", "stop"] = Field(
        "stop", description="On a NaN/Inf loss or grad norm: skip the step or stop with a report."
    )
    max_skipped_steps: int = Field(
        10, ge=0, description="With nonfinite=skip: stop after more skipped steps than this."
    )
    log_every: int = Field(1, ge=1, description="TensorBoard scalars every N steps.")
    tensorboard: bool = Field(
        True,
        description="Also log scalars to TensorBoard (needs mugv-dit[train]); metrics.jsonl "
        "is always written.",
    )
    save_every: int = Field(
        0, ge=0, description="Checkpoint every N steps (0: only at the end of the run)."
    )
    keep_checkpoints: int = Field(
        0,
        ge=0,
        description="Keep the newest N complete checkpoints, removing older ones once a new "
        "one is complete (never the one `latest` names); 0 keeps all.",
    )
    async_save: bool = Field(
        False, description="Write checkpoints in the background (CUDA only; sync on CPU)."
    )
    peak_tflops: float | None = Field(
        989.0,
        gt=0,
        description="Per-device dense bf16 peak (TFLOP/s) that MFU is measured against "
        "(H100/H200 SXM: 989; set yours for other GPUs); null: no MFU. Not reported on CPU.",
    )
    progress: bool = True
    init_from: str | None = Field(
        None, description="mugv.dit-export folder to start from when no checkpoint exists."
    )


class RunConfig(BaseModel):
    """Everything a ``mugv-dit train`` run needs."""

    model_config = _STRICT

    preset: str | None = Field(None, description="Model preset; `model` fields override it.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    curriculum: list[StageConfig] = Field(
        default_factory=lambda: [StageConfig(name="main", steps=10)]
    )
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    lora: LoraConfig | None = Field(
        None,
        description="Train LoRA adapters (mugv_dit.lora) on a frozen base instead of every "
        "weight; start from train.init_from. null: full-parameter training.",
    )
    samples: SamplesConfig = Field(default_factory=SamplesConfig)
    output_dir: str = "runs/dit"

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.curriculum)

    @model_validator(mode="before")
    @classmethod
    def _named_learning_rates(cls, raw):
        """A stage's learning rate out of range is named by stage index and name (the
        schema's own range check would name only the list index)."""
        stages = raw.get("curriculum") if isinstance(raw, dict) else None
        for i, stage in enumerate(stages if isinstance(stages, list) else []):
            if not isinstance(stage, dict):
                continue
            for name, low in (("lr", "> 0"), ("min_lr", ">= 0")):
                value = stage.get(name)
                if not isinstance(value, int | float) or isinstance(value, bool):
                    continue
                ok = value > 0 if name == "lr" else value >= 0  # False for NaN too
                if not ok or value == float("inf"):
                    raise ValueError(
                        f"curriculum[{i}] ({stage.get('name')!r}).{name} = {value}: a learning "
                        f"rate must be finite and {low}"
                    )
        return raw

    @model_validator(mode="before")
    @classmethod
    def _runtime_fields_out_of_model(cls, raw):
        """Configs written before the split (``resolved_config.yaml`` of older runs) set the
        runtime settings under ``model``: read them as ``runtime`` ones, with a warning."""
        if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
            return raw
        legacy = {k: v for k, v in raw["model"].items() if k in LEGACY_MODEL_RUNTIME_FIELDS}
        if not legacy:
            return raw
        runtime = dict(raw.get("runtime") or {})
        for key, value in legacy.items():
            if key in runtime and runtime[key] != value:
                raise ValueError(
                    f"model.{key}={value!r} and runtime.{key}={runtime[key]!r}: {key} is a "
                    f"runtime setting; set only runtime.{key}"
                )
            runtime[key] = value
            warnings.warn(
                f"model.{key} is a runtime setting: read as runtime.{key}={value!r} "
                "(move it to the runtime section)",
                FutureWarning,
                stacklevel=2,
            )
        model = {k: v for k, v in raw["model"].items() if k not in legacy}
        return {**raw, "model": model, "runtime": runtime}

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        names = [s.name for s in self.curriculum]
        if not names:
            raise ValueError("curriculum must list at least one stage")
        if len(set(names)) != len(names):
            raise ValueError(f"curriculum stage names must be unique: {names}")
        if self.samples.every_steps and self.samples.weights == "ema" and self.train.ema_decay is None:
            raise ValueError("samples.weights=ema, but the run keeps no EMA (train.ema_decay=null)")
        plateau = [s.name for s in self.curriculum if s.advance_on_plateau is not None]
        if plateau and self.validation.path is None:
            raise ValueError(
                f"curriculum stages {plateau} set advance_on_plateau, which needs validation: "
                "set validation.path"
            )
        par = self.parallel
        if self.model.num_layers % par.pipeline_parallel:
            raise ValueError(
                f"model.num_layers={self.model.num_layers} not divisible by "
                f"parallel.pipeline_parallel={par.pipeline_parallel}"
            )
        if self.model.num_heads % (par.tensor_parallel * par.context_parallel):
            raise ValueError(
                f"model.num_heads={self.model.num_heads} not divisible by parallel.tensor_parallel"
                f" x parallel.context_parallel={par.tensor_parallel * par.context_parallel}"
            )
        return self


def expand_preset(raw: dict) -> dict:
    """A copy of a raw run config with its ``preset`` expanded into ``model`` fields (the
    config's own ``model`` fields win)."""
    raw = dict(raw)
    preset = raw.get("preset")
    if preset is not None:
        if preset not in MODEL_PRESETS:
            raise ValueError(f"preset {preset!r} unknown; choose from {sorted(MODEL_PRESETS)}")
        raw["model"] = {**MODEL_PRESETS[preset], **(raw.get("model") or {})}
    return raw


def resolve_config(raw: dict) -> RunConfig:
    """Build a RunConfig from a raw dict, expanding ``preset`` into model fields."""
    return RunConfig(**expand_preset(raw))


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> RunConfig:
    """Read a YAML run config and apply ``--set`` overrides (mugv_formats.config_loading:
    list indices such as ``curriculum.0.steps=5``; ConfigError names file, field, value)."""
    return load_typed_config(RunConfig, path, overrides, build=resolve_config)
