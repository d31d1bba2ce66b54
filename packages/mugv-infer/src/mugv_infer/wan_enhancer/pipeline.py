"""``WanEnhancePipeline``: the MUG-V release's enhancer, one SDEdit step from s = 0.3.

The release's recipe (its ``enhance_video``), step by step:

1. encode the video with the Wan VAE: the posterior mean, normalised
   ``(mu - mean) * (1 / std)`` -> clean latents ``x0`` ``[B, 16, 1 + (F - 1) / 4, H/8, W/8]``;
2. the prompt (default: the release's quality prompt) and the release's negative prompt
   through umT5: 512 tokens, features past each text's last token zeroed;
3. noise to ``s = 0.3`` (float32): ``x = (1 - s) x0 + s eps``, ``eps`` drawn on the CPU in
   float32 from the generator; the first latent frame put back clean;
4. one DiT call per CFG branch on ``cat([x, x0])`` (the folded 32-channel patch embedding)
   with timestep ``1000 s`` on every frame but the first (t = 0);
   ``v = v_neg + 2 (v_pos - v_neg)``;
5. one Euler step to 0: ``x - s v`` (Wan's velocity is ``eps - x0``); the first latent frame
   put back clean again;
6. decode ``z / (1 / std) + mean`` with the Wan VAE, clamped to [-1, 1].

Legend: B batch, C latent channels, T latent frames, F frames, H/W pixels, L text tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from mugv_infer.wan_enhancer.convert import (
    RELEASE_HEAD_DIM,
    load_release_enhancer_dit,
    load_wan_t5,
    load_wan_vae,
    read_state,
)
from mugv_infer.wan_enhancer.settings import (
    RELEASE_ENHANCE_PROMPT,
    RELEASE_GUIDANCE,
    RELEASE_LORA_ALPHA,
    RELEASE_NEGATIVE_PROMPT,
    RELEASE_STRENGTH,
    locate_release,
)
from mugv_infer.wan_enhancer.transformer import frame_timesteps, framewise_forward

TEXT_LEN = 512
NUM_TRAIN_TIMESTEPS = 1000


@dataclass
class WanEnhanceOutput(BaseOutput):
    """``frames``: ``[B, 3, F, H, W]`` in [-1, 1] (``pt``), ``[B, F, H, W, 3]`` in [0, 1]
    (``np``), or the refined normalised latents (``latent``)."""

    frames: torch.Tensor


class WanEnhancePipeline(DiffusionPipeline):
    """The release's enhancer on diffusers parts: ``transformer`` (``WanTransformer3DModel``
    with the folded 32-channel patch embedding and the LoRA), ``vae``
    (``AutoencoderKLWan``), ``text_encoder`` (``UMT5EncoderModel``), ``tokenizer``."""

    model_cpu_offload_seq = "text_encoder->transformer->vae"

    def __init__(self, tokenizer, text_encoder, transformer, vae):
        super().__init__()
        self.register_modules(
            tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae
        )

    @classmethod
    def from_release(
        cls,
        enhancer: str | Path,
        wan: str | Path | None = None,
        *,
        torch_dtype: torch.dtype = torch.bfloat16,
        lora_alpha: float = RELEASE_LORA_ALPHA,
        fuse_lora: bool = False,
        attention_head_dim: int = RELEASE_HEAD_DIM,
    ) -> WanEnhancePipeline:
        """Load the released files (found by :func:`.settings.locate_release`), every key
        converted (:mod:`.convert`). The release runs every part in bf16 and keeps the LoRA
        apart from the base weights (``fuse_lora`` merges it: one more bf16 rounding)."""
        from transformers import AutoTokenizer

        paths = locate_release(enhancer, wan)
        transformer = load_release_enhancer_dit(
            read_state(paths["dit"]),
            read_state(paths["lora"]),
            lora_alpha=lora_alpha,
            fuse_lora=fuse_lora,
            attention_head_dim=attention_head_dim,
            dtype=torch_dtype,
            sources=(str(paths["dit"]), str(paths["lora"])),
        )
        text_encoder = load_wan_t5(
            read_state(paths["t5"]), source=str(paths["t5"]), dtype=torch_dtype
        )
        vae = load_wan_vae(read_state(paths["vae"]), source=str(paths["vae"]), dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(paths["tokenizer"], local_files_only=True)
        return cls(tokenizer, text_encoder, transformer, vae)

    # ------------------------------------------------------------------ steps
    def check_inputs(
        self, video, prompt, negative_prompt, strength, guidance_scale
    ) -> torch.Tensor:
        """ValueError naming the bad value -> ``video`` as ``[B, 3, F, H, W]``."""
        if not 0.0 < float(strength) <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        if not 1.0 <= float(guidance_scale) <= 100.0:
            raise ValueError(f"guidance_scale must be in [1, 100], got {guidance_scale}")
        if not isinstance(video, torch.Tensor):
            raise ValueError(
                f"video must be a tensor [B, 3, F, H, W] in [-1, 1], got {type(video).__name__}"
            )
        if video.ndim == 4:
            video = video[None]
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"video must be [B, 3, F, H, W] in [-1, 1], got {tuple(video.shape)}")
        if not bool(torch.isfinite(video).all()):
            raise ValueError("video has non-finite values")
        b, _, _, h, w = video.shape
        if h % 16 or w % 16:
            raise ValueError(f"video size {h}x{w}: height and width must be multiples of 16")
        for name, p in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if not isinstance(p, str) and len(p) != b:
                raise ValueError(f"{len(p)} {name}s for {b} videos")
        return video

    def encode_prompt(self, prompt: str | list[str], batch: int, device) -> torch.Tensor:
        """umT5 features ``[B, 512, D]`` (float32) of the cleaned texts, zero past each text's
        last token (Wan's prompter)."""
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        texts = [prompt] * batch if isinstance(prompt, str) else list(prompt)
        tokens = self.tokenizer(
            [prompt_clean(t) for t in texts],
            padding="max_length",
            max_length=TEXT_LEN,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
        features = self.text_encoder(ids, attention_mask=mask).last_hidden_state.float()
        return features * mask[..., None].to(features.dtype)

    def _normalisation(self, device):
        cfg = self.vae.config
        mean = torch.tensor(cfg.latents_mean, dtype=torch.float32, device=device).view(
            1, -1, 1, 1, 1
        )
        inv_std = 1.0 / torch.tensor(cfg.latents_std, dtype=torch.float32, device=device).view(
            1, -1, 1, 1, 1
        )
        return mean, inv_std

    def encode_video(self, video_BCFHW: torch.Tensor, device) -> torch.Tensor:
        """Normalised posterior means (float32)."""
        mean, inv_std = self._normalisation(device)
        dtype = next(self.vae.parameters()).dtype
        mu = self.vae.encode(video_BCFHW.to(device, dtype)).latent_dist.mode().float()
        return (mu - mean) * inv_std

    def decode_latents(self, latents_BCTHW: torch.Tensor, device) -> torch.Tensor:
        """Frames ``[B, 3, F, H, W]`` in [-1, 1] (float32)."""
        mean, inv_std = self._normalisation(device)
        dtype = next(self.vae.parameters()).dtype
        z = latents_BCTHW / inv_std + mean
        return self.vae.decode(z.to(dtype)).sample.float().clamp(-1, 1)

    def velocity(self, latents, clean, t_BT, text_BLD) -> torch.Tensor:
        dtype = self.transformer.dtype
        hidden = torch.cat([latents, clean], dim=1).to(dtype)
        return framewise_forward(self.transformer, hidden, t_BT, text_BLD.to(dtype)).float()

    @torch.no_grad()
    def __call__(
        self,
        video: torch.Tensor,
        prompt: str | list[str] = RELEASE_ENHANCE_PROMPT,
        negative_prompt: str | list[str] = RELEASE_NEGATIVE_PROMPT,
        strength: float = RELEASE_STRENGTH,
        guidance_scale: float = RELEASE_GUIDANCE,
        generator: torch.Generator | None = None,
        output_type: str = "pt",
        return_dict: bool = True,
    ):
        """``video``: ``[B, 3, F, H, W]`` (or ``[3, F, H, W]``) in [-1, 1]. Returns
        :class:`WanEnhanceOutput` (see its fields for ``output_type``)."""
        video = self.check_inputs(video, prompt, negative_prompt, strength, guidance_scale)
        if output_type not in ("pt", "np", "latent"):
            raise ValueError(f"output_type must be 'pt', 'np' or 'latent', got {output_type!r}")
        device = self._execution_device
        b = video.shape[0]
        # 1. clean latents (the VAE first: the release encodes before the text)
        clean = self.encode_video(video, device)
        # 2. text
        cfg = guidance_scale != 1.0
        text = self.encode_prompt(prompt, b, device)
        neg = self.encode_prompt(negative_prompt, b, device) if cfg else None
        # 3. noise to s; the first latent frame clean
        s = torch.tensor(strength, dtype=torch.float32)
        noise = randn_tensor(
            clean.shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32
        )
        latents = (1 - s) * clean + s * noise.to(device)
        latents[:, :, :1] = clean[:, :, :1]
        t_BT = frame_timesteps(s * NUM_TRAIN_TIMESTEPS, b, clean.shape[2]).to(device)
        # 4. the DiT, CFG
        v = self.velocity(latents, clean, t_BT, text)
        if cfg:
            v_neg = self.velocity(latents, clean, t_BT, neg)
            v = v_neg + guidance_scale * (v - v_neg)
        # 5. one Euler step to s = 0
        latents = latents + v * (0.0 - s.to(device))
        latents[:, :, :1] = clean[:, :, :1]
        if output_type == "latent":
            frames = latents
        else:
            # 6. decode
            frames = self.decode_latents(latents, device)
            if output_type == "np":
                frames = ((frames + 1) / 2).permute(0, 2, 3, 4, 1).cpu().numpy()
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return WanEnhanceOutput(frames=frames)
