"""Typed settings of the ``mugv-infer`` commands.

Precedence: ``--set key=value`` > command-line flags > ``--config`` YAML > defaults. The
resolved settings are written beside every output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from mugv_formats.config_loading import load_config
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mugv_infer.limits import DEFAULT_NEGATIVE_PROMPT, MAX_FPS, MAX_GUIDANCE, MAX_STEPS
from mugv_infer.release import PRESET_OUTPUT_FPS, PRESETS, InferenceChoices
from mugv_infer.wan_enhancer.settings import ReleaseEnhanceSettings

# non-finite floats (nan, inf) are refused in every field: they made all-black videos
_STRICT = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

MAX_VIDEOS_PER_PROMPT = 64
SEED_MAX = 2**64 - 1
"""Seeds are what ``torch.Generator.manual_seed`` takes without aliasing: 0 .. 2**64 - 1."""


class LoraAdapter(BaseModel):
    """One LoRA adapter applied to the DiT: a peft folder and the weight of its update."""

    model_config = _STRICT

    path: Path = Field(description="peft adapter folder (adapter_config.json + weights).")
    weight: float = Field(1.0, ge=-100, le=100, description="Scale of the adapter's update.")


def parse_lora(spec) -> dict | LoraAdapter:
    """``PATH[:WEIGHT]`` (the ``--lora`` flag; a trailing ``:number`` is the weight, else
    the whole string is the path) -> ``{path, weight}``; dicts / adapters pass through."""
    if isinstance(spec, dict | LoraAdapter):
        return spec
    text = str(spec)
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            return {"path": head, "weight": float(tail)}
        except ValueError:
            pass
    return {"path": text, "weight": 1.0}


def _lora_list(value):
    """``lora`` given as None, one spec or a list of specs -> a list of specs."""
    if value is None:
        return []
    if isinstance(value, str | Path | dict | LoraAdapter):
        value = [value]
    return [parse_lora(v) for v in value]


LORA_DESCRIPTION = (
    "LoRA adapters (peft folders) fused into the DiT before it runs, each with a weight: "
    "the model computes W x + sum_i weight_i (alpha_i / r_i) B_i A_i x. CLI: --lora "
    "PATH[:WEIGHT] (repeatable); YAML: a list of {path, weight} or 'PATH[:WEIGHT]' strings."
)


def _seed(default: int):
    return Field(default, ge=0, le=SEED_MAX, strict=True, description="0 .. 2**64 - 1.")


class RuntimeConfig(BaseModel):
    """Where and how the models run."""

    model_config = _STRICT

    device: str = Field("auto", description="'auto' (cuda if present), 'cpu', 'cuda', 'cuda:1'.")
    dtype: Literal["float32", "bfloat16"] = Field(
        "bfloat16", description="Weights/activations of DiT, VAE and T5 (CPU runs use float32)."
    )
    cpu_offload: bool = Field(
        False, description="Keep T5, DiT and VAE on the CPU; move each to the GPU while it runs."
    )
    vae_tile: int | None = Field(
        None, ge=1, description="Decode in spatial tiles of this many latents (None: whole frames)."
    )
    attention_backend: Literal["auto", "sdpa", "fa4"] = Field(
        "auto", description="Self-attention kernel: auto = FA4 forward on Hopper if installed."
    )
    attention_pad_head_dim: Literal["auto"] | Annotated[int, Field(ge=0, le=256)] = Field(
        "auto",
        description="Self-attention on FA4 zero-padded to this head dim (exact): auto = 72 -> 80 "
        "(FA4's SM90 forward is ~14% faster there); 0 = never pad.",
    )
    compile: bool = Field(False, description="torch.compile each DiT block (CUDA).")
    fused_ops: bool = Field(
        True, description="mugv-kernels fused norms in the blocks (Triton on CUDA)."
    )
    step_cache_threshold: float = Field(
        0.0, ge=0, description="> 0: reuse block residuals between steps (approximate)."
    )
    sequence_parallel: int = Field(1, ge=1, description="Ulysses sequence-parallel ranks.")
    cfg_parallel: bool = Field(False, description="Run the CFG branches on 2 ranks.")
    # issue 27 (mugv_infer.quantize, .graphed, .low_memory, .cache_calibration)
    quantization: Literal["none", "fp8"] = Field(
        "none", description="fp8: the DiT's block linears in float8 e4m3 (row-wise scales)."
    )
    fp8_backend: Literal["auto", "torchao", "scaled_mm", "emulated"] = Field(
        "auto",
        description="auto: torch._scaled_mm on sm>=8.9 (torchao only by name: it failed on "
        "torch 2.11, 2026-12-07), emulated elsewhere (numerics only).",
    )
    fp8_mode: Literal["dynamic", "weight_only"] = Field(
        "dynamic",
        description="dynamic: float8 weights and activations (fast); weight_only: float8 "
        "storage, bf16 compute (memory; less error, no speed-up).",
    )
    fp8_tolerance: float = Field(
        0.05,
        gt=0,
        le=1,
        description="Load-time guard: a layer further (rel L2) from its bf16 output stays bf16 "
        "(the e4m3 floor is ~0.037 dynamic, ~0.026 weight-only).",
    )
    fp8_keep_bf16: list[str] = Field(
        default_factory=list,
        description="Block linears kept in bf16 (fnmatch on names: 'blocks.0.*', "
        "'*.self_attention.qkv').",
    )
    fp8_calibration: Path | None = Field(
        None, description="A calibrate-fp8 JSON: the layers it keeps in bf16 stay bf16."
    )
    graphed_step: bool = Field(False, description="Replay the DiT blocks as a CUDA graph.")
    low_memory: bool = Field(
        False, description="The 24 GB recipe: fp8, T5/DiT/VAE offloaded in turn, tiled VAE."
    )
    step_cache_calibration: Path | None = Field(
        None, description="A calibrate-cache JSON: its chosen step_cache_threshold is used."
    )


class GenerateConfig(BaseModel):
    """``mugv-infer generate``."""

    model_config = _STRICT

    preset: Literal["mugv", "release"] = Field(
        "mugv",
        description="'release': the MUG-V release's choices (mugv_infer.release): I2V decode, "
        "posterior-sampled image latent, bf16 schedule numerics + float32 T5, rounded crop, "
        "20 fps. Fills `choices` and `output_fps` where they are not given.",
    )
    choices: InferenceChoices = Field(
        default_factory=InferenceChoices,
        description="Per-choice settings (i2v_decode, condition_latent, numerics, "
        "crop_rounding); unset keys come from the preset.",
    )
    model: Path = Field(description="mugv.dit-export folder (or a saved transformer folder).")
    vae: Path = Field(description="mugv.vae-checkpoint folder.")
    text_encoder: Path | None = Field(None, description="Local T5 encoder folder (with tokenizer).")
    prompt: list[str] = Field(description="One or more prompts.")
    negative_prompt: str | None = Field(
        DEFAULT_NEGATIVE_PROMPT, description="None: the DiT's learned null caption."
    )
    aesthetic_score: float | None = Field(
        6.0,
        ge=0,
        le=10,
        description="Appends 'aesthetic score: X.' to each prompt (as the release).",
    )
    image: Path | None = Field(None, description="I2V / TI2V: first-frame image.")
    last_image: Path | None = Field(None, description="Last-frame image.")
    video: Path | None = Field(None, description="Continuation: a clip whose frames lead.")
    resolution: str = Field("720p", description="'720p' (aspect-ratio table) or 'HEIGHTxWIDTH'.")
    aspect_ratio: str = Field("16:9", description="Key of the release's 720p table (H:W).")
    frames: int | str = Field(105, description="1 + 8k frames, or '5s' / '3s'.")
    steps: int = Field(25, ge=1, le=MAX_STEPS)
    guidance_scale: float = Field(4.0, ge=1.0, le=MAX_GUIDANCE)
    guidance_rescale: float = Field(0.0, ge=0.0, le=1.0)
    num_videos_per_prompt: int = Field(1, ge=1, le=MAX_VIDEOS_PER_PROMPT)
    seed: int = _seed(42)
    fps: float = Field(30.0, gt=0, le=MAX_FPS, description="fps the DiT is conditioned on.")
    output_fps: float = Field(
        21.0,
        gt=0,
        le=MAX_FPS,
        description="fps written to the file (preset mugv: 21, 105 frames = 5 s; release: 20).",
    )
    output_type: Literal["video", "latent"] = Field(
        "video", description="'video': .mp4 / .gif / frames folder; 'latent': latent shards."
    )
    out: Path = Field(Path("out.mp4"), description="Output file or folder.")
    overwrite: bool = Field(
        False, description="Replace an output mugv-infer wrote before (never anything else)."
    )
    append: bool = Field(
        False,
        description="--output-type latent: add the samples to an existing latent dataset with "
        "the same latent header (VAE, statistics, text encoder).",
    )
    rewrite_prompt: bool = Field(
        False, description="Expand each prompt into the release's caption style (rewriter)."
    )
    rewriter: Path | None = Field(None, description="Local instruction-tuned LLM folder.")
    rewriter_max_new_tokens: int = Field(256, ge=8, le=4096)
    rewritten_prompt: list[str] | None = Field(
        None,
        description="The prompts encoded after rewriting (written by --rewrite-prompt; "
        "given, they are used as they are).",
    )
    enhance: ReleaseEnhanceSettings = Field(
        default_factory=ReleaseEnhanceSettings,
        description="The release's Wan-based enhancer after generation (--enhance PATH).",
    )
    lora: list[LoraAdapter] = Field(default_factory=list, description=LORA_DESCRIPTION)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @field_validator("lora", mode="before")
    @classmethod
    def _lora(cls, value):
        return _lora_list(value)

    @model_validator(mode="before")
    @classmethod
    def _preset_defaults(cls, data):
        """The preset fills ``choices`` keys and ``output_fps`` that are not given."""
        if not isinstance(data, dict) or data.get("preset", "mugv") not in PRESETS:
            return data  # the field's own check names a bad preset
        preset = data.get("preset", "mugv")
        data = dict(data)
        if data.get("output_fps") is None:
            data["output_fps"] = PRESET_OUTPUT_FPS[preset]
        given = data.get("choices")
        if given is None or isinstance(given, dict):
            data["choices"] = {**PRESETS[preset].model_dump(), **(given or {})}
        return data


class EnhanceConfig(BaseModel):
    """``mugv-infer enhance``."""

    model_config = _STRICT

    model: Path
    vae: Path
    text_encoder: Path | None = None
    lora: list[LoraAdapter] = Field(
        default_factory=list, description="Of the enhancer. " + LORA_DESCRIPTION
    )
    video: Path = Field(description="Video to refine.")
    prompt: list[str] = Field(default_factory=lambda: [""])
    negative_prompt: str | None = DEFAULT_NEGATIVE_PROMPT
    resolution: str = Field("720p")
    aspect_ratio: str = Field("16:9")
    strength: float = Field(0.3, gt=0, le=1, description="Noise level the video is taken to.")
    steps: int = Field(1, ge=1, le=MAX_STEPS)
    guidance_scale: float = Field(2.0, ge=1.0, le=MAX_GUIDANCE)
    seed: int = _seed(42)
    fps: float = Field(30.0, gt=0, le=MAX_FPS)
    output_fps: float = Field(21.0, gt=0, le=MAX_FPS)
    out: Path = Path("enhanced.mp4")
    overwrite: bool = Field(
        False, description="Replace an output mugv-infer wrote before (never anything else)."
    )
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @field_validator("lora", mode="before")
    @classmethod
    def _lora(cls, value):
        return _lora_list(value)


def _prompt_list(kind: type[BaseModel]):
    def build(data: dict):
        if isinstance(data.get("prompt"), str):
            data = {**data, "prompt": [data["prompt"]]}
        return kind.model_validate(data)

    return build


def resolve(kind: type[BaseModel], yaml_path: Path | None, flags: dict, sets: list[str]):
    """defaults < YAML < flags < ``--set key=value`` (mugv_formats.config_loading: values read
    as YAML, list indices; a ConfigError of one line names the file, field and value)."""
    return load_config(kind, yaml_path, sets, flags=flags, build=_prompt_list(kind))
