"""Settings of the release enhancer chained after generation (``mugv-infer generate
--enhance PATH``) and where its files are; pydantic only (cheap to import)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

RELEASE_ENHANCE_PROMPT = "高质量视频,HD,清晰,运动,电影,高清,high quality,cinema"
"""The prompt of the release's enhancer (its sample dataset's caption for every video)."""
RELEASE_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
"""The release enhancer's negative prompt (Wan's)."""
RELEASE_STRENGTH = 0.3
RELEASE_GUIDANCE = 2.0
RELEASE_LORA_ALPHA = 4.0
"""The release's ``lora_alpha`` at inference (its default; ``run.sh`` passes rank 256 only):
the LoRA update is scaled by 4 / 256."""

RELEASE_DIT_FILE = "dit_i2v.safetensors"
RELEASE_LORA_FILE = "pytorch_model.bin"
WAN_T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
WAN_VAE_FILE = "Wan2.1_VAE.pth"
WAN_TOKENIZER_DIR = "google/umt5-xxl"
WAN_FOLDER = "Wan2.1-T2V-1.3B"
RELEASE_HEAD_DIM = 128
"""Attention head width of every Wan2.1 DiT (1.3B: 12 heads of 128); not in the file."""


class ReleaseEnhanceSettings(BaseModel):
    """``enhance.*`` of ``mugv-infer generate``: the release's enhancer after generation."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    path: Path | None = Field(
        None,
        description="The release's enhancer files: a folder with dit_i2v.safetensors and "
        "pytorch_model.bin, or one holding enhancer/ or MUG-V-inference/enhancer/ (the "
        "release's pretrained_ckpt). Unset: no enhancement.",
    )
    wan: Path | None = Field(
        None,
        description="The Wan2.1-T2V-1.3B folder (umT5 .pth, Wan2.1_VAE.pth, google/umt5-xxl/); "
        "unset: found beside the enhancer files as the release lays them out.",
    )
    prompt: str = Field(
        RELEASE_ENHANCE_PROMPT, description="The enhancer's prompt (the release's)."
    )
    negative_prompt: str = Field(RELEASE_NEGATIVE_PROMPT, description="The release's.")
    strength: float = Field(RELEASE_STRENGTH, gt=0.0, le=1.0, description="SDEdit noise level s.")
    guidance_scale: float = Field(RELEASE_GUIDANCE, ge=1.0, le=100.0)
    lora_alpha: float = Field(RELEASE_LORA_ALPHA, gt=0.0, description="LoRA scale alpha / rank.")
    attention_head_dim: int = Field(
        RELEASE_HEAD_DIM, ge=2, description="The DiT's head width (not in its file; Wan2.1: 128)."
    )


def locate_release(path: str | Path, wan: str | Path | None = None) -> dict[str, Path]:
    """The release's files from ``path`` (the enhancer folder, or a folder holding
    ``enhancer/`` or ``MUG-V-inference/enhancer/``) and ``wan`` (default: ``path`` itself when
    it holds the Wan files, else ``Wan2.1-T2V-1.3B/`` beside ``MUG-V-inference/``, as the
    release's ``pretrained_ckpt``). ValueError naming what is missing."""
    path = Path(path)
    candidates = [path, path / "enhancer", path / "MUG-V-inference" / "enhancer"]
    enhancer = next((c for c in candidates if (c / RELEASE_DIT_FILE).is_file()), None)
    if enhancer is None:
        raise ValueError(
            f"--enhance {path}: no {RELEASE_DIT_FILE} in it, in enhancer/ or in "
            "MUG-V-inference/enhancer/"
        )
    if wan is None:
        options = [
            path,
            path / WAN_FOLDER,
            enhancer / WAN_FOLDER,
            enhancer.parent.parent / WAN_FOLDER,
        ]
        wan = next((c for c in options if (c / WAN_VAE_FILE).is_file()), None)
        if wan is None:
            raise ValueError(
                f"--enhance {path}: no {WAN_FOLDER}/ with {WAN_VAE_FILE} found beside it; "
                "give it with --enhance-wan"
            )
    wan = Path(wan)
    paths = {
        "dit": enhancer / RELEASE_DIT_FILE,
        "lora": enhancer / RELEASE_LORA_FILE,
        "t5": wan / WAN_T5_FILE,
        "vae": wan / WAN_VAE_FILE,
        "tokenizer": wan / WAN_TOKENIZER_DIR,
    }
    for what, p in paths.items():
        if not (p.is_dir() if what == "tokenizer" else p.is_file()):
            flag = "--enhance" if what in ("dit", "lora") else "--enhance-wan"
            where = enhancer if what in ("dit", "lora") else wan
            raise ValueError(f"{flag} {where}: no {p.relative_to(where)} ({what})")
    return paths
