"""The enhancer: one-step SDEdit refinement of a generated video at the same resolution.

As the release's enhancer: encode the video, noise it to s = 0.3
(``x = 0.7 x0 + 0.3 eps``), take ONE Euler step back to s = 0 with classifier-free guidance
2.0 (no resolution shift), decode. The refiner is a MUG-DiT whose LoRA weights load through
peft (:func:`load_lora`); :func:`save_lora` writes the same folder layout peft does
(``adapter_config.json`` + ``adapter_model.safetensors``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers.utils.torch_utils import randn_tensor
from mugv_formats.atomic import atomic_open, atomic_write_text

from mugv_infer.checks import check_finite_tensor, check_finite_weights, check_number
from mugv_infer.outputs import locked_folder
from mugv_infer.pipeline import (
    MAX_FPS,
    MAX_GUIDANCE,
    MAX_STEPS,
    DenoiseInputs,
    MUGVPipeline,
    MUGVPipelineOutput,
)
from mugv_infer.sizes import check_frames, check_size
from mugv_infer.video_io import load_video

DEFAULT_LORA_TARGETS = ("qkv", "proj", "q", "kv", "fc1", "fc2")
"""Linear layers of the blocks a LoRA adapts by default (attention + MLP)."""


def add_lora(transformer, rank: int = 4, alpha: float = 4.0, targets=DEFAULT_LORA_TARGETS):
    """Inject an (empty: B = 0) LoRA adapter into the blocks' linears through peft."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets))
    inject_adapter_in_model(config, transformer.blocks)
    transformer._lora_config = config
    return transformer


LORA_KIND = "mugv-infer.lora"
"""Kind of an adapter folder written by :func:`save_lora` (its ownership marker)."""


def save_lora(transformer, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write the transformer's LoRA weights as a peft adapter folder (``adapter_config.json``
    last). A new or empty folder only; an adapter of ours is replaced (atomically) only with
    ``overwrite``; anything else there is never touched (OutputError). The folder is locked
    while it is written (a second writer is refused naming the holder)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save

    config = getattr(transformer, "_lora_config", None)
    if config is None:
        raise ValueError("the transformer has no LoRA adapter (add_lora / load_lora first)")
    cfg = config.to_dict()
    cfg["target_modules"] = sorted(cfg["target_modules"])
    state = get_peft_model_state_dict(transformer.blocks)
    with locked_folder(
        path, LORA_KIND, "adapter_config.json", overwrite=overwrite, what="path"
    ) as claim:
        folder = claim.write_path
        with atomic_open(folder / "adapter_model.safetensors") as f:
            f.write(save({k: v.detach().contiguous().cpu() for k, v in state.items()}))
        atomic_write_text(folder / "adapter_config.json", json.dumps(cfg, indent=1, default=str))
        claim.commit()
    return Path(path)


def load_lora(transformer, path: str | Path, *, fuse: bool = False):
    """Load a peft LoRA adapter folder into the transformer's blocks.

    ``fuse`` merges the low-rank update into the base weights (no extra cost per step).
    ValueError naming the folder / the keys that do not fit.
    """
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(path)
    cfg_file, weights = path / "adapter_config.json", path / "adapter_model.safetensors"
    for f in (cfg_file, weights):
        if not f.is_file():
            raise ValueError(f"LoRA folder {path} has no {f.name}")
    raw = json.loads(cfg_file.read_text())
    config = LoraConfig(
        r=int(raw["r"]),
        lora_alpha=float(raw["lora_alpha"]),
        target_modules=list(raw["target_modules"]),
    )
    state = load_file(str(weights))
    check_finite_weights(state, path, "LoRA")
    inject_adapter_in_model(config, transformer.blocks)
    result = set_peft_model_state_dict(transformer.blocks, state)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ValueError(f"LoRA folder {path}: keys that fit no layer: {unexpected[:5]}")
    transformer._lora_config = config
    if fuse:
        from peft.tuners.lora import LoraLayer

        for module in transformer.blocks.modules():
            if isinstance(module, LoraLayer):
                module.merge()
    return transformer


class MUGVEnhancePipeline(MUGVPipeline):
    """One-step SDEdit refiner (same components as :class:`MUGVPipeline`)."""

    def check_inputs(
        self,
        video,
        prompt,
        strength,
        height,
        width,
        *,
        num_inference_steps: int = 1,
        guidance_scale: float = 2.0,
        fps: float = 30.0,
        prompt_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ValueError naming the bad value -> the video as ``[B, 3, F, H, W]`` in [-1, 1]
        (a file read and resized to ``height`` x ``width``). Numbers finite and in range,
        tensors finite."""
        check_number("strength", strength, low=0.0, low_open=True, high=1.0)
        check_number(
            "num_inference_steps", num_inference_steps, low=1, high=MAX_STEPS, integer=True
        )
        check_number("guidance_scale", guidance_scale, low=1.0, high=MAX_GUIDANCE)
        check_number("fps", fps, low=0.0, low_open=True, high=MAX_FPS)
        check_finite_tensor(prompt_embeds, "prompt_embeds")
        if not isinstance(video, torch.Tensor):
            if height is None or width is None:
                raise ValueError("enhancing a video file needs height and width")
            video = load_video(video, height, width)
        if video.ndim == 4:
            video = video[None]
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"video must be [B, 3, F, H, W] in [-1, 1], got {tuple(video.shape)}")
        check_finite_tensor(video, "video")
        b, _, f, h, w = video.shape
        check_size(h, w)
        check_frames(f)
        if prompt is not None:
            n = 1 if isinstance(prompt, str) else len(prompt)
            if n != b:
                raise ValueError(f"{n} prompts for {b} videos")
        return video

    @torch.no_grad()
    def __call__(
        self,
        video,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        strength: float = 0.3,
        num_inference_steps: int = 1,
        guidance_scale: float = 2.0,
        generator: torch.Generator | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        fps: float = 30.0,
        output_type: str = "np",
        return_dict: bool = True,
        attention_kwargs: dict | None = None,
        height: int | None = None,
        width: int | None = None,
    ):
        """``video``: ``[3, F, H, W]`` / ``[B, 3, F, H, W]`` in [-1, 1] or a file path
        (resized to ``height`` x ``width`` when given). ``strength``: the noise level s the
        video is taken to (0.3 as the release)."""
        video = self.check_inputs(
            video, prompt, strength, height, width, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, fps=fps, prompt_embeds=prompt_embeds,
        )  # fmt: skip
        b = video.shape[0]
        device = self._execution_device
        # 1. encode the prompt
        text, text_mask, neg, neg_mask = self.encode_prompt(
            prompt, negative_prompt, guidance_scale > 1.0, 1, prompt_embeds, prompt_attention_mask,
            device=device,
        )  # fmt: skip
        # 2. the video's latents, noised to s = strength; timesteps from there (no shift)
        x0 = self._encode_frames(video).to(device)
        self._offload(self.vae)
        self.scheduler.set_timesteps(num_inference_steps, sigma_max=strength)  # no shift
        noise = randn_tensor(x0.shape, generator=generator, device=torch.device("cpu")).to(device)
        latents = self.scheduler.add_noise(x0, noise, strength)
        inputs = DenoiseInputs(
            text,
            text_mask,
            (neg, neg_mask),
            fps_B=torch.full((b,), float(fps), device=device),
            noisy_BT=torch.ones(b, x0.shape[2], dtype=torch.bool, device=device),
            attention_kwargs=attention_kwargs,
        )
        # 3. denoising loop, 4. decode
        latents, _ = self.denoise(latents, inputs, guidance_scale)
        frames = self.output_frames(latents, output_type)
        if not return_dict:
            return (frames,)
        return MUGVPipelineOutput(
            frames=frames, prompt_embeds=text, prompt_attention_mask=text_mask
        )
