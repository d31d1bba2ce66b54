"""``MUGVPipeline``: text/image-to-video generation with MUG-DiT (a diffusers pipeline).

``__call__`` reads like diffusers' video pipelines: check inputs, encode the prompt, plan the
noise levels, prepare latents (conditioning latents written into their slots), denoise with
classifier-free guidance inside a progress bar, decode, return :class:`MUGVPipelineOutput`.

Tasks: T2V; I2V (``image``: its latent in slot 0, held clean, t=0 modulation); TI2V (both);
first/last frame (``image`` + ``last_image``: slots 0 and T-1); continuation (``video``: the
latents of its first ``1 + 8k`` frames fill slots 0..k).

Legend: B batch (prompts x videos per prompt), C latent channels, T/H/W latent grid,
L text tokens, D text width, F pixel frames.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from mugv_formats.atomic import atomic_write_text
from mugv_vae.model import MUGVAE
from PIL import Image

from mugv_infer import folder
from mugv_infer.checks import (
    NonFiniteError,
    check_finite_step,
    check_finite_tensor,
    check_finite_weights,
    check_number,
)
from mugv_infer.limits import DEFAULT_NEGATIVE_PROMPT, MAX_FPS, MAX_GUIDANCE, MAX_STEPS
from mugv_infer.models.transformer import MUGDiTTransformer3DModel
from mugv_infer.models.vae import AutoencoderMUGV
from mugv_infer.outputs import locked_folder
from mugv_infer.release import (
    NULL_CAPTION,
    InferenceChoices,
    decode_release_i2v,
    encode_condition,
)
from mugv_infer.scheduler import MUGVFlowEulerScheduler
from mugv_infer.sizes import check_frames, check_size
from mugv_infer.step_cache import StepCache
from mugv_infer.text import encode_prompts, load_t5
from mugv_infer.video_io import load_image, load_video

OUTPUT_TYPES = ("np", "pil", "pt", "latent")
PIPELINE_KIND = "mugv-infer.pipeline"
"""Kind of a folder written by :meth:`MUGVPipeline.save_pretrained` (its ownership marker;
complete once ``model_index.json`` is written)."""
TEMPORAL_COMPRESSION = 8
SPATIAL_COMPRESSION = 8


@dataclass
class MUGVPipelineOutput(BaseOutput):
    """``frames``: ``np`` float ``[B, F, H, W, 3]`` in [0, 1]; ``pt`` ``[B, F, 3, H, W]`` in
    [0, 1]; ``pil`` a list (per video) of lists of images; ``latent`` the normalised latents
    ``[B, C, T, H, W]``. ``prompt_embeds`` / ``prompt_attention_mask``: the text features used
    (to write latent shards). ``step_cache_skipped``: steps served by the step cache."""

    frames: Any
    prompt_embeds: torch.Tensor | None = None
    prompt_attention_mask: torch.Tensor | None = None
    step_cache_skipped: int = 0


def rescale_guidance(v_cfg: torch.Tensor, v_cond: torch.Tensor, rescale: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2023): match the guided prediction's std to the
    conditional one's per sample, mixed by ``rescale``."""
    if rescale <= 0:
        return v_cfg
    dims = list(range(1, v_cfg.ndim))
    ratio = v_cond.std(dim=dims, keepdim=True) / v_cfg.std(dim=dims, keepdim=True)
    return rescale * (v_cfg * ratio) + (1 - rescale) * v_cfg


def with_aesthetic_score(prompt: str | list[str] | None, score: float | None):
    """The release's prompt suffix: ``"P aesthetic score: X."`` for each prompt (a list);
    ``prompt`` unchanged when there is no score (or no prompt)."""
    if prompt is None or score is None:
        return prompt
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    return [f"{p} aesthetic score: {score:.1f}." for p in prompts]


@dataclass(frozen=True)
class DenoiseInputs:
    """What the DiT is given at every step besides the noisy latents and the noise level,
    fixed for one generation and on the execution device."""

    text_BLD: torch.Tensor
    text_mask_BL: torch.Tensor
    neg: tuple[torch.Tensor | None, torch.Tensor | None]
    """The unconditional branch's ``([B, L, D], [B, L])`` text; ``(None, None)``: no CFG."""
    fps_B: torch.Tensor
    noisy_BT: torch.Tensor
    """False where a latent frame is held at its clean conditioning latent."""
    frame_index: torch.Tensor | None = None
    """``[B, T + 2]`` RoPE time index (None: ``arange(T + 2)``)."""
    clean_BCTHW: torch.Tensor | None = None
    """Conditioning latents (None: nothing is held)."""
    attention_kwargs: dict | None = None

    def hold_clean(self, latents_BCTHW: torch.Tensor) -> torch.Tensor:
        """The conditioning latents written into their slots (held frames stay clean)."""
        if self.clean_BCTHW is None:
            return latents_BCTHW
        hold = self.noisy_BT[:, None, :, None, None]
        return torch.where(hold, latents_BCTHW, self.clean_BCTHW)


def _pad_text(embeds: list[torch.Tensor], masks: list[torch.Tensor]):
    """Concatenate ``[B_i, L_i, D]`` batches, padding L to the longest -> (embeds, masks)."""
    length = max(e.shape[1] for e in embeds)
    out_e, out_m = [], []
    for e, m in zip(embeds, masks):
        pad = length - e.shape[1]
        out_e.append(torch.nn.functional.pad(e, (0, 0, 0, pad)))
        out_m.append(torch.nn.functional.pad(m.bool(), (0, pad), value=False))
    return torch.cat(out_e), torch.cat(out_m)


class MUGVPipeline(DiffusionPipeline):
    """MUG-V text/image-to-video pipeline.

    Components: ``transformer`` (:class:`MUGDiTTransformer3DModel`), ``vae``
    (:class:`AutoencoderMUGV`, mugv-vae's VAE as a diffusers model; a bare ``MUGVAE`` is
    wrapped), ``scheduler`` (:class:`MUGVFlowEulerScheduler`), and optionally
    ``tokenizer`` + ``text_encoder`` (transformers T5 encoder; without them pass
    ``prompt_embeds``). Saved as a diffusers folder (:mod:`mugv_infer.folder`).
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _callback_tensor_inputs = ["latents"]  # noqa: RUF012
    _optional_components = ["tokenizer", "text_encoder"]  # noqa: RUF012

    def __init__(self, transformer, vae, scheduler, tokenizer=None, text_encoder=None):
        super().__init__()
        if isinstance(vae, MUGVAE):
            vae = AutoencoderMUGV.from_mugv_vae(vae)
        self.register_modules(
            transformer=transformer,
            vae=vae,
            scheduler=scheduler,
            tokenizer=tokenizer,
            text_encoder=text_encoder,
        )
        check_components(transformer, vae, text_encoder)
        self._offload_device: torch.device | None = None
        self.cfg_parallel = None  # set by mugv_infer.parallel.apply_cfg_parallel
        self.choices = InferenceChoices()  # mugv_infer.release.apply_preset: the release's
        self.text_encoder_id: str | None = None

    @property
    def vae_checkpoint_id(self) -> str:
        """Id of the ``mugv.vae-checkpoint`` the VAE's weights came from (latent shards record
        it; kept through save / load in the VAE's config)."""
        return self.vae.config.checkpoint_id or "unknown"

    @property
    def vae_tile(self) -> tuple[int, int] | None:
        """(tile, overlap) in latents while VAE tiling is on, else None."""
        if not self.vae.use_tiling:
            return None
        return self.vae.tile_latents, self.vae.tile_overlap_latents

    # ------------------------------------------------------------------ set-up
    @classmethod
    def from_parts(
        cls,
        model: str | Path,
        vae: str | Path,
        text_encoder: str | Path | None = None,
        *,
        torch_dtype: torch.dtype = torch.float32,
        text_encoder_dtype: torch.dtype | None = None,
    ) -> MUGVPipeline:
        """Build from a ``mugv.dit-export`` (or diffusers-saved transformer) folder, a
        ``mugv.vae-checkpoint`` folder and a local T5 folder. Errors name the part.
        ``text_encoder_dtype``: the T5's dtype (default ``torch_dtype``; the release's is
        float32)."""
        model, vae = Path(model), Path(vae)
        for name, p in (("model", model), ("vae", vae)):
            if not (p / "config.json").is_file():
                raise ValueError(f"{name} folder {p} has no config.json (missing or unfinished)")
        transformer = load_transformer(model, torch_dtype)
        try:
            vae_model = AutoencoderMUGV.from_checkpoint(vae)
        except Exception as e:  # formats errors name the file
            raise ValueError(f"vae folder {vae}: {e}") from None
        check_finite_weights(vae_model.model, vae, "vae")
        tokenizer = encoder = None
        if text_encoder is not None:
            tokenizer, encoder = load_t5(text_encoder, text_encoder_dtype or torch_dtype)
            check_finite_weights(encoder, text_encoder, "text encoder")
        # nn.Module.to: diffusers' ModelMixin.to warns about fp32 modules it does not have
        vae_model = torch.nn.Module.to(vae_model, torch_dtype)
        pipe = cls(transformer, vae_model, MUGVFlowEulerScheduler(), tokenizer, encoder)
        pipe.text_encoder_id = None if text_encoder is None else Path(text_encoder).name
        return pipe

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
        *,
        overwrite: bool = False,
        model_card: str | None = None,
        **kwargs,
    ) -> None:
        """A diffusers folder (:mod:`mugv_infer.folder`): ``model_index.json`` (written last)
        and one subfolder per component, each with its config and safetensors weights
        (``variant``: ``*.VARIANT.safetensors``); loads with ``DiffusionPipeline`` /
        ``MUGVPipeline.from_pretrained``.

        A new or empty folder only; a saved pipeline of ours is replaced (atomically) only
        with ``overwrite``; anything else there is never touched (OutputError). The folder is
        locked while it is written (a second writer is refused naming the holder).
        ``model_card``: the text of a ``README.md`` written into the folder with it."""
        if kwargs.get("push_to_hub"):
            raise ValueError("push_to_hub is not supported: mugv-infer never talks to a hub")
        self.register_to_config(**folder.library_names(self))
        folder.refuse_complete_legacy(save_directory, PIPELINE_KIND, overwrite, "save_directory")
        with locked_folder(
            save_directory, PIPELINE_KIND, folder.MODEL_INDEX, overwrite=overwrite,
            what="save_directory",
        ) as claim:  # fmt: skip
            DiffusionPipeline.save_pretrained(
                self, claim.write_path, safe_serialization=safe_serialization, variant=variant,
                max_shard_size=max_shard_size,
            )  # fmt: skip
            if model_card is not None:
                atomic_write_text(claim.write_path / "README.md", model_card)
            claim.commit()

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        torch_dtype: torch.dtype | None = None,
        **kw,
    ):
        """Load a local folder written by :meth:`save_pretrained` (or ``mugv-infer
        convert``); ``torch_dtype`` (or diffusers' newer name ``dtype``; default float32) and
        ``variant`` as in diffusers. Weights with a NaN / inf are refused naming the file and
        tensor. A folder of the old ``pipeline.json`` layout loads with a ``FutureWarning``."""
        root = Path(pretrained_model_name_or_path)
        dtype = kw.pop("dtype", None) or torch_dtype or torch.float32
        if folder.folder_layout(root) == "legacy":
            return folder.load_legacy(cls, root, dtype)
        folder.check_model_index(root)
        pipe = super().from_pretrained(root, **{folder.DTYPE_KEYWORD: dtype}, **kw)
        folder.check_loaded(pipe, root)
        return pipe

    def to(self, device=None, dtype: torch.dtype | None = None):
        """Move (and optionally cast) every component; mugv-vae's VAE is a plain module, so
        diffusers' generic ``to`` (which reads ``module.dtype``) is not used."""
        for module in self._modules_in_order():
            # nn.Module.to: diffusers' ModelMixin.to warns about fp32 modules it does not have
            torch.nn.Module.to(module, device=device, dtype=dtype)
        self._offload_device = None
        return self

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device="cuda") -> None:
        """Keep every component on the CPU; move each to ``device`` only while it runs
        (T5 for the prompt, the DiT for the loop, the VAE for encode/decode)."""
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", gpu_id or 0)
        self._offload_device = dev
        for module in self._modules_in_order():
            module.to("cpu")

    def enable_vae_tiling(self, tile_latents: int = 32, overlap_latents: int = 8) -> None:
        """Decode in spatial tiles of ``tile_latents`` latents (bounds VAE memory); the
        conditioning frames are still encoded whole (exact). ``pipe.vae.enable_tiling()``
        tiles both."""
        self.vae.enable_tiling(tile_latents, overlap_latents, tile_encode=False)

    def disable_vae_tiling(self) -> None:
        self.vae.disable_tiling()

    def _modules_in_order(self):
        return [m for m in (self.text_encoder, self.transformer, self.vae) if m is not None]

    @property
    def _execution_device(self) -> torch.device:
        if self._offload_device is not None:
            return self._offload_device
        return self.transformer.device

    def _onload(self, module):
        if self._offload_device is not None and module is not None:
            module.to(self._offload_device)
        return module

    def _offload(self, module) -> None:
        if self._offload_device is not None and module is not None:
            module.to("cpu")
            if self._offload_device.type == "cuda":
                torch.cuda.empty_cache()

    # ------------------------------------------------------------------ parts of __call__
    def check_inputs(
        self,
        prompt,
        prompt_embeds,
        negative_prompt,
        negative_prompt_embeds,
        height,
        width,
        num_frames,
        num_inference_steps,
        guidance_scale,
        output_type,
        image,
        last_image,
        video,
        latents,
        callback_on_step_end_tensor_inputs,
        step_cache_threshold: float = 0.0,
        *,
        guidance_rescale: float = 0.0,
        num_videos_per_prompt: int = 1,
        fps: float = 30.0,
        aesthetic_score: float | None = None,
        prompt_embeds_tensors: tuple = (),
    ) -> None:
        """ValueError naming the bad value; runs before any model work. Numbers must be
        finite and in range, tensors finite (a NaN or an infinity gives a black video)."""
        check_number(
            "num_inference_steps", num_inference_steps, low=1, high=MAX_STEPS, integer=True
        )
        check_number("guidance_scale", guidance_scale, low=1.0, high=MAX_GUIDANCE)
        check_number("guidance_rescale", guidance_rescale, low=0.0, high=1.0)
        check_number("num_videos_per_prompt", num_videos_per_prompt, low=1, integer=True)
        check_number("fps", fps, low=0.0, low_open=True, high=MAX_FPS)
        check_number("aesthetic_score", aesthetic_score, optional=True)
        check_number("step_cache_threshold", step_cache_threshold, low=0.0)
        for name, t in (
            ("latents", latents),
            ("image", image),
            ("last_image", last_image),
            ("video", video),
            *prompt_embeds_tensors,
        ):
            check_finite_tensor(t, name)
        if step_cache_threshold > 0 and self.transformer.sequence_parallel is not None:
            raise ValueError("step_cache_threshold > 0 is not supported with sequence parallelism")
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of prompt and prompt_embeds")
        if prompt is not None and not isinstance(prompt, (str, list)):
            raise ValueError(
                f"prompt must be a string or a list of strings, got {type(prompt).__name__}"
            )
        if prompt is not None and self.text_encoder is None:
            raise ValueError("prompt needs a text encoder; load one or pass prompt_embeds")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("pass at most one of negative_prompt and negative_prompt_embeds")
        check_size(height, width)
        check_frames(num_frames, TEMPORAL_COMPRESSION)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type {output_type!r} unknown; choose from {OUTPUT_TYPES}")
        for name, img in (("image", image), ("last_image", last_image)):
            if isinstance(img, torch.Tensor) and (
                img.ndim != 3 or img.shape[0] != 3 or tuple(img.shape[1:]) != (height, width)
            ):
                raise ValueError(
                    f"{name} tensor must be [3, {height}, {width}] in [-1, 1], got {tuple(img.shape)}"
                )
        if isinstance(video, torch.Tensor):
            if video.ndim != 4 or video.shape[0] != 3 or tuple(video.shape[2:]) != (height, width):
                raise ValueError(
                    f"video tensor must be [3, F, {height}, {width}] in [-1, 1], got {tuple(video.shape)}"
                )
            if video.shape[1] >= num_frames:
                raise ValueError(
                    f"continuation video has {video.shape[1]} frames, needs fewer than num_frames={num_frames}"
                )
        if latents is not None:
            shape = self.latent_shape(1, height, width, num_frames)[1:]
            if tuple(latents.shape[1:]) != shape:
                raise ValueError(
                    f"latents must be [B, {', '.join(map(str, shape))}], got {tuple(latents.shape)}"
                )
        bad = set(callback_on_step_end_tensor_inputs or []) - set(self._callback_tensor_inputs)
        if bad:
            raise ValueError(
                f"callback tensor inputs {sorted(bad)} unknown; allowed {self._callback_tensor_inputs}"
            )

    def latent_shape(self, batch: int, height: int, width: int, num_frames: int):
        return (
            batch,
            self.transformer.config.in_channels,
            check_frames(num_frames, TEMPORAL_COMPRESSION),
            height // SPATIAL_COMPRESSION,
            width // SPATIAL_COMPRESSION,
        )

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        negative_prompt: str | list[str] | None = None,
        do_classifier_free_guidance: bool = True,
        num_videos_per_prompt: int = 1,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        max_sequence_length: int = 300,
        device=None,
    ):
        """-> ``(embeds [B, L, D], mask [B, L], neg_embeds | None, neg_mask | None)``, repeated
        ``num_videos_per_prompt`` times. Without a negative prompt the unconditional branch
        gets the release's ``DEFAULT_NEGATIVE_PROMPT`` (encoded by the text encoder); the DiT's
        learned null caption only for ``negative_prompt=NULL_CAPTION``, or, with a warning,
        when there is no text encoder to encode the default (the release preset refuses)."""
        device = device or self._execution_device
        if prompt_embeds is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            self._onload(self.text_encoder)
            prompt_embeds, prompt_attention_mask = encode_prompts(
                self.tokenizer, self.text_encoder, prompts, device, max_sequence_length
            )
        if prompt_attention_mask is None:
            prompt_attention_mask = torch.ones(prompt_embeds.shape[:2], dtype=torch.bool)
        b = prompt_embeds.shape[0]
        neg, neg_mask = None, None
        if do_classifier_free_guidance and negative_prompt is None:
            negative_prompt = self._default_negative_prompt(negative_prompt_embeds)
        if do_classifier_free_guidance:
            if negative_prompt_embeds is not None:
                neg, neg_mask = negative_prompt_embeds, negative_prompt_attention_mask
            elif negative_prompt is not None and negative_prompt != NULL_CAPTION:
                negs = (
                    [negative_prompt] * b
                    if isinstance(negative_prompt, str)
                    else list(negative_prompt)
                )
                if len(negs) != b:
                    raise ValueError(f"negative_prompt has {len(negs)} entries, prompt has {b}")
                self._onload(self.text_encoder)
                neg, neg_mask = encode_prompts(
                    self.tokenizer, self.text_encoder, negs, device, max_sequence_length
                )
            else:
                null = self.transformer.y_embedder.null_caption.detach()
                neg = null[None].expand(b, -1, -1).float()
            if neg_mask is None:
                neg_mask = torch.ones(neg.shape[:2], dtype=torch.bool)
            if neg.shape[0] != b:
                raise ValueError(f"negative prompt batch {neg.shape[0]} != prompt batch {b}")
        self._offload(self.text_encoder)

        def rep(x):
            return None if x is None else x.to(device).repeat_interleave(num_videos_per_prompt, 0)

        return rep(prompt_embeds), rep(prompt_attention_mask), rep(neg), rep(neg_mask)

    def _default_negative_prompt(self, negative_prompt_embeds):
        """The unconditional text when none is given: the release's negative prompt."""
        if negative_prompt_embeds is not None or self.text_encoder is not None:
            return None if negative_prompt_embeds is not None else DEFAULT_NEGATIVE_PROMPT
        if self.choices.numerics == "release" or self.choices.i2v_decode == "release":
            raise ValueError(
                "the release preset passes the release's negative prompt: load a text encoder "
                "or give negative_prompt_embeds (DEFAULT_NEGATIVE_PROMPT encoded)"
            )
        warnings.warn(
            "no text encoder to encode the default negative prompt: the unconditional branch "
            "uses the DiT's learned null caption (pass negative_prompt_embeds, or "
            "negative_prompt=NULL_CAPTION to choose it)",
            stacklevel=3,
        )
        return NULL_CAPTION

    def _encode_frames(self, frames_BCFHW: torch.Tensor, generator=None) -> torch.Tensor:
        """Normalised latents of pixel frames; ``generator``: conditioning latents, drawn
        from the VAE posterior when ``self.choices.condition_latent == "sample"``."""
        vae = self._onload(self.vae)
        dev = self._execution_device
        sample = generator is not None and self.choices.condition_latent == "sample"
        with torch.no_grad():
            frames = frames_BCFHW.to(dev, vae.dtype)
            if sample:
                z = encode_condition(vae.to_mugv_vae(), frames, sample, generator)
            else:
                z = vae.normalize_latents(vae.encode(frames).latent_dist.mode())
        return z.float()

    def prepare_conditioning(
        self, image, last_image, video, height, width, num_frames, batch, generator=None
    ):
        """-> (clean latents ``[B, C, T, H, W]`` or None, noisy frames ``[B, T]`` bool,
        first pixel frames to paste back ``[3, F0, H, W]`` or None). ``generator``: for
        posterior samples (``choices.condition_latent == "sample"``), drawn after the noise."""
        crop = self.choices.crop_rounding
        shape = self.latent_shape(batch, height, width, num_frames)
        t = shape[2]
        noisy = torch.ones(batch, t, dtype=torch.bool)
        cond = torch.zeros(shape)
        given = None
        if video is not None:
            frames = video if isinstance(video, torch.Tensor) else None
            if frames is None:
                frames = load_video(video, height, width, max_frames=num_frames - 1)
            keep = 1 + (frames.shape[1] - 1) // TEMPORAL_COMPRESSION * TEMPORAL_COMPRESSION
            z = self._encode_frames(frames[None, :, :keep], generator)
            cond[:, :, : z.shape[2]] = z.cpu()
            noisy[:, : z.shape[2]] = False
            given = frames[:, :keep]
        if image is not None:
            img = (
                image if isinstance(image, torch.Tensor) else load_image(image, height, width, crop)
            )
            z = self._encode_frames(img[None, :, None], generator)
            cond[:, :, :1] = z.cpu()
            noisy[:, 0] = False
            given = img[:, None]
        if last_image is not None:
            img = (
                last_image
                if isinstance(last_image, torch.Tensor)
                else load_image(last_image, height, width, crop)
            )
            z = self._encode_frames(img[None, :, None], generator)
            cond[:, :, -1:] = z.cpu()
            noisy[:, -1] = False
        self._offload(self.vae)
        if bool(noisy.all()):
            return None, noisy, None
        return cond, noisy, given

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> video ``[B, 3, F, H, W]`` in [-1, 1] (float32)."""
        vae = self._onload(self.vae)
        with torch.no_grad():
            videos = [
                vae.decode(
                    vae.denormalize_latents(z[None].to(self._execution_device, vae.dtype))
                ).sample
                for z in latents
            ]
        self._offload(self.vae)
        video = torch.cat(videos).float()
        if not bool(torch.isfinite(video).all()):
            raise NonFiniteError(
                "the VAE decoded non-finite pixels from finite latents (broken VAE decoder "
                "weights, or an overflow in reduced precision: try runtime.dtype=float32)"
            )
        return video.clamp(-1, 1)

    def prepare_latents(self, batch, height, width, num_frames, generator, latents, device):
        """The starting noise ``[B, C, T, H, W]`` (float32 on ``device``): drawn on the CPU
        from ``generator`` (the same video on any device) unless ``latents`` are given."""
        shape = self.latent_shape(batch, height, width, num_frames)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=torch.device("cpu"))
        if latents.shape[0] != batch:
            raise ValueError(
                f"latents batch {latents.shape[0]} != prompts x videos per prompt = {batch}"
            )
        return latents.float().to(device)

    def _predict(self, x, sigma, inputs: DenoiseInputs):
        """(v_cond, v_uncond or None): cond and uncond in one batch, or split over the CFG
        group."""
        c = self.transformer.config.in_channels
        dtype = self.transformer.dtype
        text, text_mask, neg, neg_mask = inputs.text_BLD, inputs.text_mask_BL, *inputs.neg
        noisy, fps, frame_index = inputs.noisy_BT, inputs.fps_B, inputs.frame_index
        common = dict(fps=fps, frame_index=frame_index, attention_kwargs=inputs.attention_kwargs)
        if neg is None:
            out = self.transformer(
                x.to(dtype), sigma, text, text_mask, noisy_frames=noisy, **common
            )
            return out.sample[:, :c].float(), None
        cfgp = self.cfg_parallel
        if cfgp is not None:
            mine = (text, text_mask) if cfgp.rank == 0 else (neg, neg_mask)
            out = self.transformer(x.to(dtype), sigma, *mine, noisy_frames=noisy, **common)
            cond, uncond = cfgp.exchange(out.sample[:, :c].float().contiguous())
            return cond, uncond
        both, both_mask = _pad_text([text, neg], [text_mask, neg_mask])
        out = self.transformer(
            torch.cat([x, x]).to(dtype),
            torch.cat([sigma, sigma]),
            both,
            both_mask,
            noisy_frames=torch.cat([noisy, noisy]),
            **{
                **common,
                "fps": torch.cat([fps, fps]),
                "frame_index": None
                if frame_index is None
                else torch.cat([frame_index, frame_index]),
            },
        )
        cond, uncond = out.sample[:, :c].float().chunk(2)
        return cond, uncond

    def guided_velocity(self, x, sigma, inputs: DenoiseInputs, guidance_scale, rescale=0.0):
        """The DiT's velocity with classifier-free guidance (and guidance rescale)."""
        v_cond, v_uncond = self._predict(x, sigma, inputs)
        if v_uncond is None:
            return v_cond
        v = v_uncond + guidance_scale * (v_cond - v_uncond)
        return rescale_guidance(v, v_cond, rescale)

    def denoise(
        self,
        latents: torch.Tensor,
        inputs: DenoiseInputs,
        guidance_scale: float,
        guidance_rescale: float = 0.0,
        *,
        callback: Callable | None = None,
        callback_tensor_inputs: list[str] | tuple[str, ...] = ("latents",),
        step_cache_threshold: float = 0.0,
    ) -> tuple[torch.Tensor, int]:
        """The denoising loop over ``self.scheduler.timesteps``, inside a progress bar; the
        conditioning latents held in their slots after every step -> (latents, steps served
        by the step cache)."""
        transformer = self._onload(self.transformer)
        cache = StepCache(step_cache_threshold) if step_cache_threshold > 0 else None
        transformer.step_cache = cache
        try:
            with self.progress_bar(total=len(self.scheduler.timesteps)) as bar:
                for i, s in enumerate(self.scheduler.timesteps):
                    sigma = torch.full_like(inputs.fps_B, float(s))
                    v = self.guided_velocity(
                        latents, sigma, inputs, guidance_scale, guidance_rescale
                    )
                    latents = inputs.hold_clean(self.scheduler.step(v, s, latents).prev_sample)
                    if callback is not None:
                        local = {"latents": latents}
                        outs = callback(self, i, s, {k: local[k] for k in callback_tensor_inputs})
                        latents = (outs or {}).get("latents", latents)
                    check_finite_step(latents, i + 1, len(self.scheduler.timesteps), float(s))
                    bar.update()
        finally:
            transformer.step_cache = None
        self._offload(self.transformer)
        return latents, 0 if cache is None else cache.skipped

    def output_frames(self, latents: torch.Tensor, output_type: str, paste=None, image=None):
        """Latents -> the requested output (see :class:`MUGVPipelineOutput`); ``paste``:
        given pixel frames ``[3, F0, H, W]`` written over the first decoded ones; ``image``:
        the I2V image ``[3, H, W]`` (with ``choices.i2v_decode == "release"`` frame 0, the
        latents after its own decoded as the release does; ``paste`` is then not used)."""
        check_finite_tensor(latents, "the latents to decode")
        if output_type == "latent":
            return latents
        if image is not None and self.choices.i2v_decode == "release":
            return postprocess_video(decode_release_i2v(self, latents, image), output_type)
        video_BCFHW = self.decode_latents(latents)
        if paste is not None:
            video_BCFHW[:, :, : paste.shape[1]] = paste.to(video_BCFHW)
        return postprocess_video(video_BCFHW, output_type)

    # ------------------------------------------------------------------ __call__
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        image=None,
        last_image=None,
        video=None,
        height: int = 720,
        width: int = 1280,
        num_frames: int = 105,
        num_inference_steps: int = 25,
        guidance_scale: float = 4.0,
        guidance_rescale: float = 0.0,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        fps: float = 30.0,
        frame_index: torch.Tensor | None = None,
        aesthetic_score: float | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        attention_kwargs: dict | None = None,
        max_sequence_length: int = 300,
        step_cache_threshold: float = 0.0,
        paste_condition_frames: bool = True,
    ):
        """Generate videos. ``image`` / ``last_image``: path, PIL image or ``[3, H, W]``
        tensor in [-1, 1]; ``video``: path or ``[3, F, H, W]`` tensor (continuation).
        ``aesthetic_score`` appends the release's "aesthetic score: X." to each prompt.
        ``frame_index``: ``[B, T + 2]`` RoPE time index (default ``arange(T + 2)``).
        ``step_cache_threshold`` > 0 enables the step cache (approximate)."""
        tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        self.check_inputs(
            prompt, prompt_embeds, negative_prompt, negative_prompt_embeds, height, width,
            num_frames, num_inference_steps, guidance_scale, output_type, image, last_image,
            video, latents, tensor_inputs, step_cache_threshold,
            guidance_rescale=guidance_rescale, num_videos_per_prompt=num_videos_per_prompt,
            fps=fps, aesthetic_score=aesthetic_score,
            prompt_embeds_tensors=(
                ("prompt_embeds", prompt_embeds),
                ("negative_prompt_embeds", negative_prompt_embeds),
            ),
        )  # fmt: skip
        device = self._execution_device
        # 1. encode the prompt (for CFG also the negative prompt, or the DiT's null caption)
        text, text_mask, neg, neg_mask = self.encode_prompt(
            with_aesthetic_score(prompt, aesthetic_score), negative_prompt, guidance_scale > 1.0,
            num_videos_per_prompt, prompt_embeds, prompt_attention_mask, negative_prompt_embeds,
            negative_prompt_attention_mask, max_sequence_length, device,
        )  # fmt: skip
        batch = text.shape[0]
        # 2. timesteps: the noise levels, shifted for the resolution and length
        t_latent = check_frames(num_frames, TEMPORAL_COMPRESSION)
        self.scheduler.set_timesteps(
            num_inference_steps, height=height, width=width, latent_frames=t_latent
        )
        # 3. latents: noise, then the conditioning latents written into their slots
        latents = self.prepare_latents(batch, height, width, num_frames, generator, latents, device)
        clean, noisy, given = self.prepare_conditioning(
            image, last_image, video, height, width, num_frames, batch, generator
        )
        inputs = DenoiseInputs(
            text, text_mask, (neg, neg_mask),
            fps_B=torch.full((batch,), float(fps), device=device),
            noisy_BT=noisy.to(device),
            frame_index=None if frame_index is None else frame_index.to(device).expand(batch, -1),
            clean_BCTHW=None if clean is None else clean.to(device),
            attention_kwargs=attention_kwargs,
        )  # fmt: skip
        latents = inputs.hold_clean(latents)
        # 4. denoising loop
        latents, skipped = self.denoise(
            latents, inputs, guidance_scale, guidance_rescale, callback=callback_on_step_end,
            callback_tensor_inputs=tensor_inputs, step_cache_threshold=step_cache_threshold,
        )  # fmt: skip
        # 5. decode (the given condition frames pasted over their decoded copies)
        frames = self.output_frames(
            latents, output_type, given if paste_condition_frames else None,
            image=given[:, 0] if image is not None else None,
        )  # fmt: skip
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return MUGVPipelineOutput(
            frames=frames,
            prompt_embeds=text,
            prompt_attention_mask=text_mask,
            step_cache_skipped=skipped,
        )


def postprocess_video(video_BCFHW: torch.Tensor, output_type: str):
    """[-1, 1] video -> the requested output type (see :class:`MUGVPipelineOutput`)."""
    video01 = ((video_BCFHW + 1) / 2).clamp(0, 1).cpu()
    if output_type == "pt":
        return video01.permute(0, 2, 1, 3, 4)
    arr = video01.permute(0, 2, 3, 4, 1).numpy()
    if output_type == "np":
        return arr
    return [[Image.fromarray(np.round(f * 255).astype(np.uint8)) for f in v] for v in arr]


def check_components(transformer, vae, text_encoder) -> None:
    """Mismatched parts: ValueError naming both sides."""
    c_dit = transformer.config.in_channels
    c_vae = vae.config.latent_channels
    if c_dit != c_vae:
        raise ValueError(
            f"the VAE makes {c_vae} latent channels but the DiT takes {c_dit} (model in_channels)"
        )
    if text_encoder is not None:
        d = getattr(text_encoder.config, "d_model", None)
        if d is not None and d != transformer.config.text_dim:
            raise ValueError(
                f"the text encoder gives {d}-wide features but the DiT takes text_dim={transformer.config.text_dim}"
            )


def load_transformer(path: Path, torch_dtype=torch.float32) -> MUGDiTTransformer3DModel:
    """A ``mugv.dit-export`` folder or a diffusers-saved transformer folder."""
    meta = json.loads((path / "config.json").read_text())
    if meta.get("format") is not None:
        return MUGDiTTransformer3DModel.from_export(path, torch_dtype=torch_dtype)
    model = MUGDiTTransformer3DModel.from_pretrained(path, torch_dtype=torch_dtype)
    check_finite_weights(model, path, "model")
    return model
