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


PEFT_PREFIX = "base_model.model."
"""Prefix of the tensor names peft's ``PeftModel.save_pretrained`` (and mugv-dit's
``export-lora``) writes: names on the whole transformer (``blocks.3.mlp.fc1.lora_A.weight``)."""


def _inject_lora(transformer, path: str | Path, adapter_name: str):
    """Inject the adapter folder at ``path`` as ``adapter_name``; returns (its LoraConfig,
    the module it was injected into). Folders with peft's whole-model names go into the
    transformer (their ``target_modules`` name block linears, e.g. a regular expression
    ``blocks\\.\\d+\\.(?:mlp\\.fc1|...)``); folders written by :func:`save_lora` (names
    relative to the blocks) into ``transformer.blocks``."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(path)
    cfg_file, weights = path / "adapter_config.json", path / "adapter_model.safetensors"
    for f in (cfg_file, weights):
        if not f.is_file():
            raise ValueError(f"LoRA folder {path} has no {f.name}")
    raw = json.loads(cfg_file.read_text())
    targets = raw.get("target_modules")
    try:
        config = LoraConfig(
            r=int(raw["r"]),
            lora_alpha=float(raw["lora_alpha"]),
            target_modules=targets if isinstance(targets, str) else list(targets),
            use_rslora=bool(raw.get("use_rslora", False)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{cfg_file}: not a LoRA adapter config ({e})") from None
    state = load_file(str(weights))
    check_finite_weights(state, path, "LoRA")
    if any(k.startswith(PEFT_PREFIX) for k in state):
        module = transformer
        state = {k.removeprefix(PEFT_PREFIX): v for k, v in state.items()}
    else:
        module = transformer.blocks
    inject_adapter_in_model(config, module, adapter_name=adapter_name)
    result = set_peft_model_state_dict(module, state, adapter_name=adapter_name)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ValueError(f"LoRA folder {path}: keys that fit no layer: {unexpected[:5]}")
    return config, module


def load_loras(transformer, adapters, *, fuse: bool = False):
    """Load several peft LoRA adapter folders at once, each with its weight: ``adapters`` is
    a list of ``(folder, weight)``; the model then computes ``W x + sum_i weight_i
    (alpha_i / r_i) B_i A_i x`` (all adapters active). ``fuse`` merges them into the base
    weights. ValueError naming the folder / the keys that do not fit."""
    from peft.tuners.lora import LoraLayer

    adapters = [(Path(p), float(w)) for p, w in adapters]
    if not adapters:
        raise ValueError("load_loras: no adapter folder given")
    for p, w in adapters:
        check_number(f"weight of LoRA {p}", w, low=-100.0, high=100.0)
    names = []
    for i, (path, _) in enumerate(adapters):
        names.append(f"lora_{i}")
        config, module = _inject_lora(transformer, path, names[-1])
    for layer in transformer.modules():
        if isinstance(layer, LoraLayer):
            present = [n for n in names if n in layer.lora_A]
            layer.set_adapter(present)
            for name, (_, weight) in zip(names, adapters, strict=True):
                if name in layer.lora_A:
                    layer.set_scale(name, weight)
    if len(adapters) == 1 and module is transformer.blocks:
        transformer._lora_config = config  # save_lora writes it back
    if fuse:
        for layer in transformer.modules():
            if isinstance(layer, LoraLayer):
                layer.merge(adapter_names=[n for n in names if n in layer.lora_A])
    return transformer


def load_lora(transformer, path: str | Path, *, fuse: bool = False, weight: float = 1.0):
    """Load a peft LoRA adapter folder (written by peft, by mugv-dit / mugv-align
    ``export-lora`` or by :func:`save_lora`) into the transformer, scaled by ``weight``.

    ``fuse`` merges the low-rank update into the base weights (no extra cost per step).
    ValueError naming the folder / the keys that do not fit. Several adapters:
    :func:`load_loras`.
    """
    return load_loras(transformer, [(path, weight)], fuse=fuse)


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
