"""The release preset: the MUG-V release's choices around the sampler, as options.

A team moving from the MUG-V release expects the same video from the same weights, prompt
and seed. The sampler agrees by default; what surrounds it is chosen here
(:class:`InferenceChoices`), one field per point where mugv's default and the release differ:

========================  =====================================  ==============================
choice                    ``mugv`` preset (default)              ``release`` preset
========================  =====================================  ==============================
``i2v_decode``            every latent from latent 0 in decoder  latents 1.. in windows of 6,
                          windows of 8; the image pasted over    none dropped; the image itself
                          decoded frame 0                        in front as frame 0
``condition_latent``      VAE posterior mean of the image        a posterior sample (drawn from
                                                                 the call's generator)
``numerics``              ``exact``: float32 shift ratio and     ``release``: ratio from bf16
                          timestep; T5 in the pipeline's dtype   tensors, timestep rounded to
                                                                 bf16 before its embedding, T5
                                                                 in float32
``crop_rounding``         ``floor`` of the centre-crop offset    ``round`` (half to even)
``output_fps``            21 (105 frames = 5 s)                  20
========================  =====================================  ==============================

Both presets pass the release's negative prompt by default (``DEFAULT_NEGATIVE_PROMPT``);
the DiT's learned null caption is used only when asked for (:data:`NULL_CAPTION`).

The release's 3:4 and 4:3 sizes (832 x 1110, 1108 x 832) crash in its final concatenation;
here they are rounded down to multiples of 16 and work in either preset.

Legend: B batch, C latent channels, K latents, h/w latent grid, F frames, H/W pixels.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

RELEASE_DECODE_WINDOW = 6
"""Latents per decoder window in the release (its VAE's ``micro_frame_size`` 48 / 8)."""
RELEASE_OUTPUT_FPS = 20.0
"""fps of the release's written files."""
MUGV_OUTPUT_FPS = 21.0
"""fps of mugv's written files (105 frames = 5 s)."""
NULL_CAPTION = "<mugv:learned-null-caption>"
"""Pass as ``negative_prompt`` to use the DiT's learned null caption as the unconditional
branch (the release never does; ``mugv-dit import-original`` fills it with random values)."""


class InferenceChoices(BaseModel):
    """The choices where the release and mugv's defaults differ (see the module table)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    i2v_decode: Literal["mugv", "release"] = Field(
        "mugv",
        description="I2V decode: 'mugv' decodes every latent (windows of 8) and pastes the "
        "image over frame 0; 'release' decodes latents 1.. in windows of 6 and puts the "
        "image in front.",
    )
    condition_latent: Literal["mean", "sample"] = Field(
        "mean", description="Conditioning latents: VAE posterior 'mean' or a 'sample'."
    )
    numerics: Literal["exact", "release"] = Field(
        "exact",
        description="'release': shift ratio from bf16 tensors, timestep rounded to bf16 "
        "before its embedding, T5 in float32.",
    )
    crop_rounding: Literal["floor", "round"] = Field(
        "floor", description="Centre-crop offset of conditioning images: floor or round."
    )


PRESETS: dict[str, InferenceChoices] = {
    "mugv": InferenceChoices(),
    "release": InferenceChoices(
        i2v_decode="release", condition_latent="sample", numerics="release", crop_rounding="round"
    ),
}
"""Named sets of choices."""
PRESET_OUTPUT_FPS = {"mugv": MUGV_OUTPUT_FPS, "release": RELEASE_OUTPUT_FPS}


def preset_choices(preset: str | InferenceChoices) -> InferenceChoices:
    if isinstance(preset, InferenceChoices):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r} unknown; choose from {sorted(PRESETS)}")
    return PRESETS[preset]


def apply_preset(pipe, preset: str | InferenceChoices = "release"):
    """Make ``pipe`` (a ``MUGVPipeline``) follow ``preset`` (a name of :data:`PRESETS` or
    an :class:`InferenceChoices`): its decode, conditioning latent and crop choices, the
    scheduler's numerics and the DiT's timestep rounding. Returns ``pipe``.

    ``numerics="release"`` wants the T5 in float32: load it so
    (``from_parts(..., text_encoder_dtype=torch.float32)``); a lower-precision T5 is cast
    up here with a warning (its weights stay rounded)."""
    choices = preset_choices(preset)
    pipe.choices = choices
    release_numerics = choices.numerics == "release"
    pipe.scheduler.register_to_config(numerics=choices.numerics)
    pipe.transformer.timestep_round_dtype = torch.bfloat16 if release_numerics else None
    encoder = pipe.text_encoder
    if release_numerics and encoder is not None and encoder.dtype != torch.float32:
        warnings.warn(
            f"the release runs T5 in float32, this one is {encoder.dtype}: cast up now "
            "(load it with text_encoder_dtype=torch.float32 for the release's features)",
            stacklevel=2,
        )
        encoder.to(torch.float32)
    return pipe


def encode_condition(vae, frames_BCFHW: torch.Tensor, sample: bool, generator=None) -> torch.Tensor:
    """Normalised conditioning latents of ``frames`` (on the VAE's device and dtype): the
    posterior mean, or with ``sample`` ``mean + std * eps`` with ``eps`` drawn on the CPU
    from ``generator`` (the same latent on any device)."""
    posterior = vae.encode_posterior(frames_BCFHW)
    if not sample:
        return vae.normalize(posterior.mode())
    if isinstance(generator, list):
        generator = generator[0]
    from diffusers.utils.torch_utils import randn_tensor  # diffusers: only where it samples

    eps = randn_tensor(
        posterior.mean.shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32
    )
    z = posterior.mean + posterior.std * eps.to(posterior.mean)
    return vae.normalize(z)


def decode_after_first(vae, latents_BCKHW, window: int = RELEASE_DECODE_WINDOW) -> torch.Tensor:
    """The release's decode of the latents after the conditioning image's: normalised latents
    ``[B, C, K, h, w]`` -> frames ``[B, 3, 8 (K - 1), H, W]``: latents 1.. in windows of
    ``window`` (the last one shorter), each window's 8 frames per latent all kept (no
    padding frames dropped), every frame decoded by the spatial trunk."""
    z_BCKHW = vae.denormalize(latents_BCKHW[:, :, 1:])
    frames = []
    for start in range(0, z_BCKHW.shape[2], window):
        feats_BCFhw = vae.temporal_decoder(z_BCKHW[:, :, start : start + window])
        b, c, f = feats_BCFhw.shape[:3]
        feats_NChw = feats_BCFhw.transpose(1, 2).reshape(b * f, c, *feats_BCFhw.shape[-2:])
        size = vae.frame_batch_size or b * f
        x_NCHW = torch.cat([vae.trunk.decode(part) for part in feats_NChw.split(size)])
        frames.append(x_NCHW.view(b, f, *x_NCHW.shape[1:]).transpose(1, 2))
    return torch.cat(frames, dim=2)


def decode_release_i2v(pipe, latents_BCKHW: torch.Tensor, image_3HW: torch.Tensor) -> torch.Tensor:
    """Video ``[B, 3, 1 + 8 (K - 1), H, W]`` in [-1, 1] (float32): ``image`` as frame 0, then
    :func:`decode_after_first` (spatially tiled when ``pipe`` has VAE tiling)."""
    from mugv_vae.config import SPATIAL_COMPRESSION
    from mugv_vae.model.tiling import tiled_apply

    vae = pipe._onload(pipe.vae).to_mugv_vae()  # AutoencoderMUGV -> mugv-vae's MUGVAE
    dtype = next(vae.parameters()).dtype
    with torch.no_grad():
        z = latents_BCKHW.to(pipe._execution_device, dtype)
        if pipe.vae_tile is None:
            rest = decode_after_first(vae, z)
        else:
            tile, overlap = pipe.vae_tile
            rest = tiled_apply(
                lambda part: decode_after_first(vae, part), z, tile, overlap, SPATIAL_COMPRESSION
            )
    pipe._offload(pipe.vae)
    if not bool(torch.isfinite(rest).all()):
        from mugv_infer.checks import NonFiniteError

        raise NonFiniteError(
            "the VAE decoded non-finite pixels from finite latents (broken VAE decoder "
            "weights, or an overflow in reduced precision: try runtime.dtype=float32)"
        )
    rest = rest.float().clamp(-1, 1).cpu()
    first = image_3HW.reshape(1, 3, 1, *image_3HW.shape[-2:]).float().cpu()
    first = first.expand(rest.shape[0], -1, -1, -1, -1)
    return torch.cat([first, rest], dim=2)
