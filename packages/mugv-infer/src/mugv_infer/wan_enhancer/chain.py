"""The release enhancer chained after generation (``mugv-infer generate --enhance PATH``):
the generated videos go through :class:`.pipeline.WanEnhancePipeline` one by one (batch 1, as
the release) before they are written."""

from __future__ import annotations

import numpy as np
import torch

from mugv_infer.wan_enhancer.settings import ReleaseEnhanceSettings, locate_release


def check_enhance(settings: ReleaseEnhanceSettings, output_type: str, frames: int) -> None:
    """Before any model loads: the release's files are there; the output is a video; the
    Wan VAE takes ``1 + 4k`` frames (every ``1 + 8k`` does)."""
    if settings.path is None:
        return
    if output_type != "video":
        raise ValueError("--enhance refines decoded videos: it needs --output-type video")
    if (frames - 1) % 4:
        raise ValueError(f"--enhance: the Wan VAE takes 1 + 4k frames, got {frames}")
    locate_release(settings.path, settings.wan)


def free_generation(pipe) -> None:
    """Move the generation pipeline's models off the GPU before the enhancer loads."""
    pipe.maybe_free_model_hooks()
    for name in ("transformer", "text_encoder", "vae"):
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            module.to("cpu")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def enhance_frames(
    settings: ReleaseEnhanceSettings,
    frames_BFHW3,
    *,
    device: torch.device,
    dtype: torch.dtype,
    seed: int,
    cpu_offload: bool = False,
) -> np.ndarray:
    """Videos ``[B, F, H, W, 3]`` in [0, 1] -> the release enhancer's, same layout. Video i
    is noised from ``torch.Generator().manual_seed(seed + i)``."""
    from mugv_infer.wan_enhancer.pipeline import WanEnhancePipeline

    pipe = WanEnhancePipeline.from_release(
        settings.path,
        settings.wan,
        torch_dtype=dtype,
        lora_alpha=settings.lora_alpha,
        attention_head_dim=settings.attention_head_dim,
    )
    if cpu_offload and device.type == "cuda":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    out = []
    for i, video in enumerate(np.asarray(frames_BFHW3)):
        x = torch.from_numpy(np.ascontiguousarray(video)).float().permute(3, 0, 1, 2) * 2 - 1
        refined = pipe(
            x[None],
            prompt=settings.prompt,
            negative_prompt=settings.negative_prompt,
            strength=settings.strength,
            guidance_scale=settings.guidance_scale,
            generator=torch.Generator().manual_seed(seed + i),
            output_type="np",
        ).frames
        out.append(refined[0])
    return np.stack(out)
