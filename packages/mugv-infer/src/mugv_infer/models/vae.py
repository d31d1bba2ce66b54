"""mugv-vae's 8x8x8 video VAE as a diffusers model (``ModelMixin`` + ``ConfigMixin``).

:class:`AutoencoderMUGV` wraps a ``mugv_vae.model.MUGVAE`` (``self.model``; mugv-vae itself
stays free of diffusers) behind the ``AutoencoderKL`` interface the diffusers ecosystem
expects: ``encode(x).latent_dist`` (a ``DiagonalGaussianDistribution``),
``decode(z).sample``, ``enable_tiling`` / ``enable_slicing``, ``save_pretrained`` /
``from_pretrained`` (``config.json`` + ``diffusion_pytorch_model.safetensors``, variants and
``torch_dtype`` honoured). The numbers are mugv-vae's own: ``encode`` is
``MUGVAE.encode_posterior`` (raw latents), ``decode`` is ``MUGVAE.decode_raw``, and
``normalize_latents`` / ``denormalize_latents`` apply the checkpoint's per-channel latent
statistics (``MUGVAE.normalize`` / ``denormalize``), so
``normalize_latents(encode(x).latent_dist.mode()) == MUGVAE.encode(x)`` and
``decode(denormalize_latents(z)).sample == MUGVAE.decode(z)`` exactly.

Legend: B batch, C latent channels, F pixel frames (1 + 8k), K latent frames (1 + k),
H/W pixels, h/w latents (H/8, W/8).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from mugv_vae.config import SPATIAL_COMPRESSION, VAEConfig
from mugv_vae.model import MUGVAE
from mugv_vae.model.tiling import tiled_apply

DEFAULT_TILE_LATENTS = 32
DEFAULT_TILE_OVERLAP_LATENTS = 8


class AutoencoderMUGV(ModelMixin, ConfigMixin):
    """The mugv video VAE with diffusers' autoencoder API (see the module docstring).

    Config fields are those of mugv-vae's ``VAEConfig`` (what defines the weights) plus
    ``checkpoint_id``: the id of the ``mugv.vae-checkpoint`` the weights came from (kept
    through save/load; latent shards record it)."""

    _supports_gradient_checkpointing = False
    _no_split_modules = ["MUGVAE"]  # noqa: RUF012

    @register_to_config
    def __init__(
        self,
        variant: str = "mugv",
        in_channels: int = 3,
        latent_channels: int = 24,
        trunk: dict[str, Any] | None = None,
        temporal: dict[str, Any] | None = None,
        unified: dict[str, Any] | None = None,
        checkpoint_id: str | None = None,
    ):
        super().__init__()
        fields = {
            "variant": variant,
            "in_channels": in_channels,
            "latent_channels": latent_channels,
        }
        for name, value in (("trunk", trunk), ("temporal", temporal), ("unified", unified)):
            if value is not None:
                fields[name] = value
        try:
            vae_config = VAEConfig.model_validate(fields)
        except ValueError as e:  # pydantic's ValidationError is a ValueError
            raise ValueError(f"AutoencoderMUGV config does not describe a mugv VAE: {e}") from None
        self.model = MUGVAE(vae_config).eval()
        self.use_tiling = False
        self.use_encode_tiling = False
        self.use_slicing = False
        self.tile_latents = DEFAULT_TILE_LATENTS
        self.tile_overlap_latents = DEFAULT_TILE_OVERLAP_LATENTS
        self.decoder_window = 8
        """Latents the temporal decoder sees together (mugv-vae's ``decode`` default)."""

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_mugv_vae(cls, vae: MUGVAE, checkpoint_id: str | None = None) -> AutoencoderMUGV:
        """Wrap an existing ``MUGVAE`` (its weights shared, not copied)."""
        cfg = vae.config.model_dump(mode="json")
        with torch.device("meta"):  # the placeholder model is replaced right away
            wrapper = cls(**cfg, checkpoint_id=checkpoint_id)
        wrapper.model = vae
        return wrapper

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kw) -> AutoencoderMUGV:
        """Load a ``mugv.vae-checkpoint`` folder (what ``mugv-vae train`` writes)."""
        from mugv_vae.checkpoint import checkpoint_id

        return cls.from_mugv_vae(MUGVAE.from_pretrained(path, **kw), checkpoint_id(path))

    def to_mugv_vae(self) -> MUGVAE:
        """The wrapped mugv-vae model (for mugv-vae's own tools)."""
        return self.model

    # ------------------------------------------------------------------ statistics
    @property
    def latent_mean(self) -> torch.Tensor:
        """Per-channel latent mean ``[C]`` (a buffer of the wrapped model)."""
        return self.model.latent_mean

    @property
    def latent_std(self) -> torch.Tensor:
        return self.model.latent_std

    def normalize_latents(self, z_BCKhw: torch.Tensor) -> torch.Tensor:
        """Raw latents -> the normalised latents the DiT works on."""
        return self.model.normalize(z_BCKhw)

    def denormalize_latents(self, z_BCKhw: torch.Tensor) -> torch.Tensor:
        return self.model.denormalize(z_BCKhw)

    # ------------------------------------------------------------------ tiling
    def enable_tiling(
        self,
        tile_latents: int = DEFAULT_TILE_LATENTS,
        overlap_latents: int = DEFAULT_TILE_OVERLAP_LATENTS,
        *,
        tile_encode: bool = True,
    ) -> None:
        """Decode (and, with ``tile_encode``, encode) in overlapping spatial tiles of
        ``tile_latents`` latents (``8 x`` that in pixels), blended over ``overlap_latents``:
        bounds VAE memory; tiles approximate the whole-frame result at their seams."""
        if tile_latents < 1 or not 0 <= overlap_latents < tile_latents:
            raise ValueError(
                f"VAE tile {tile_latents} / overlap {overlap_latents}: need tile >= 1 and "
                "0 <= overlap < tile"
            )
        self.tile_latents, self.tile_overlap_latents = int(tile_latents), int(overlap_latents)
        self.use_tiling = True
        self.use_encode_tiling = bool(tile_encode)

    def disable_tiling(self) -> None:
        self.use_tiling = self.use_encode_tiling = False

    def enable_slicing(self) -> None:
        """Encode / decode one video of a batch at a time."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    # ------------------------------------------------------------------ encode / decode
    def _moments(self, video_BCFHW: torch.Tensor) -> torch.Tensor:
        def run(x: torch.Tensor) -> torch.Tensor:
            post = self.model.encode_posterior(x)
            return torch.cat([post.mean, post.logvar], dim=1)

        if not (self.use_tiling and self.use_encode_tiling):
            return run(video_BCFHW)
        s = SPATIAL_COMPRESSION
        return tiled_apply(
            run,
            video_BCFHW,
            self.tile_latents * s,
            self.tile_overlap_latents * s,
            Fraction(1, s),
            align=s,
        )

    def encode(
        self, x: torch.Tensor, return_dict: bool = True
    ) -> AutoencoderKLOutput | tuple[DiagonalGaussianDistribution]:
        """Video ``[B, 3, F, H, W]`` in [-1, 1] (F = 1 + 8k) -> the posterior over raw latents
        ``[B, C, K, h, w]``: ``.latent_dist.mode()`` / ``.sample(generator)``."""
        if self.use_slicing and x.shape[0] > 1:
            moments = torch.cat([self._moments(x_i) for x_i in x.split(1)])
        else:
            moments = self._moments(x)
        dist = DiagonalGaussianDistribution(moments)
        if not return_dict:
            return (dist,)
        return AutoencoderKLOutput(latent_dist=dist)

    def _decode(self, z_BCKhw: torch.Tensor) -> torch.Tensor:
        if not self.use_tiling:
            return self.model.decode_raw(z_BCKhw, self.decoder_window)
        return self.model.decode_raw(
            z_BCKhw, self.decoder_window, self.tile_latents, self.tile_overlap_latents
        )

    def decode(
        self, z: torch.Tensor, return_dict: bool = True
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Raw latents ``[B, C, K, h, w]`` -> ``.sample``: video ``[B, 3, 1 + 8(K-1), 8h, 8w]``
        in about [-1, 1]."""
        if self.use_slicing and z.shape[0] > 1:
            video = torch.cat([self._decode(z_i) for z_i in z.split(1)])
        else:
            video = self._decode(z)
        if not return_dict:
            return (video,)
        return DecoderOutput(sample=video)

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Reconstruction: encode, the posterior's mode (or a sample), decode."""
        dist = self.encode(sample).latent_dist
        z = dist.sample(generator) if sample_posterior else dist.mode()
        return self.decode(z, return_dict=return_dict)
