"""The mugv 8x8x8 video VAE: spatial trunk + temporal VAE + latent normalisation.

Tensor legend: B batch, C channels, T frames (or latents), H, W pixels (or features/latents),
K latents per clip, R latents per decoder window.

Frame/latent rule ("1+8k"): a clip of ``T = 1 + 8k`` frames in [-1, 1] encodes to ``1 + k``
latents. The first frame is repeated 7 times in front, giving ``k + 1`` chunks of 8 frames;
each latent is computed from its own chunk only (minimal encoding), so latent 0 is a
still-image latent. ``decode`` undoes it and drops the 7 padding frames. Any other ``T`` is
refused with a ``ValueError``; trim a clip to the largest ``1 + 8k`` first.

Latent normalisation: ``encode`` returns ``(z - latent_mean) / latent_std`` and ``decode``
expects such normalised latents; the per-channel statistics are buffers stored in the
checkpoint. ``encode_raw``/``decode_raw`` work on un-normalised latents. Normalisation
happens in exactly one place (``normalize``/``denormalize``).
"""

from __future__ import annotations

import warnings
from fractions import Fraction

import torch
from mugv_formats import FormatError
from torch import nn

import mugv_vae.model.streaming as streaming
from mugv_vae.checkpoint import read_checkpoint, save_checkpoint
from mugv_vae.config import SPATIAL_COMPRESSION, TIME_COMPRESSION, VAEConfig, VAERuntime
from mugv_vae.model.distribution import DiagonalGaussian
from mugv_vae.model.temporal import (
    TemporalDecoder,
    TemporalEncoder,
    set_checkpointing,
    set_fused_group_norm_silu,
    set_nhwc_ops,
)
from mugv_vae.model.tiling import tiled_apply

DECODER_WINDOWS = (1, 4, 8)
"""Decoder windows (latents seen together) used in training; any R >= 1 works at inference."""


def latent_frames(num_frames: int) -> int:
    """Latents for a clip of ``num_frames`` (= 1 + 8k) frames; ValueError otherwise."""
    if num_frames < 1 or (num_frames - 1) % TIME_COMPRESSION:
        raise ValueError(
            f"num_frames must be 1 + {TIME_COMPRESSION}k (1, 9, 17, 25, 33, ...), got {num_frames}"
        )
    return 1 + (num_frames - 1) // TIME_COMPRESSION


def check_video(video_BCTHW: torch.Tensor, name: str = "video") -> None:
    """Raise ValueError unless ``video`` is a float [B, 3, 1+8k, H, W] tensor in [-1, 1]."""
    if not isinstance(video_BCTHW, torch.Tensor) or not video_BCTHW.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor, got {getattr(video_BCTHW, 'dtype', type(video_BCTHW))}"
        )
    if video_BCTHW.ndim != 5 or video_BCTHW.shape[1] != 3:
        raise ValueError(f"{name} must have shape [B, 3, T, H, W], got {tuple(video_BCTHW.shape)}")
    _, _, t, h, w = video_BCTHW.shape
    latent_frames(t)
    if h % SPATIAL_COMPRESSION or w % SPATIAL_COMPRESSION or h == 0 or w == 0:
        raise ValueError(f"{name} height and width must be multiples of 8, got {h}x{w}")
    lo, hi = float(video_BCTHW.min()), float(video_BCTHW.max())
    if lo < -1.001 or hi > 1.001:
        raise ValueError(
            f"{name} values must lie in [-1, 1], got [{lo:.3g}, {hi:.3g}] "
            "(scale uint8 frames with x / 127.5 - 1)"
        )
    if lo >= 0.0 and video_BCTHW.numel() > 4096:
        warnings.warn(
            f"{name} has no negative values (min {lo:.3g}): frames in [0, 1] instead of [-1, 1]?",
            stacklevel=3,
        )


class MUGVAE(nn.Module):
    """8x8x8 video VAE with 24 latent channels (see the module docstring for the rules).

    ``config`` defines the weights (and is what a checkpoint stores); ``runtime`` how the model
    runs (kernels, layouts, memory budget), changeable later with :meth:`apply_runtime`."""

    def __init__(self, config: VAEConfig, runtime: VAERuntime | None = None) -> None:
        super().__init__()
        self.config = config
        if config.variant == "unified":
            from mugv_vae.model.unified import PixelTrunk, UnifiedDecoder, UnifiedEncoder

            # Identity trunk; the 8-frame chunk encoder/decoder works on pixels directly.
            self.trunk = PixelTrunk()
            c, u = config.in_channels, config.unified
            self.temporal_encoder = UnifiedEncoder(c, config.latent_channels, u)
            self.temporal_decoder = UnifiedDecoder(c, config.latent_channels, u)
        else:
            from mugv_vae.model.trunk import SpatialTrunk

            feat = config.trunk.feature_channels
            self.trunk = SpatialTrunk(config.trunk, config.in_channels)
            self.temporal_encoder = TemporalEncoder(feat, config.latent_channels, config.temporal)
            self.temporal_decoder = TemporalDecoder(feat, config.latent_channels, config.temporal)
        self.register_buffer("latent_mean", torch.zeros(config.latent_channels))
        self.register_buffer("latent_std", torch.ones(config.latent_channels))
        self.frame_batch_size: int | None = None
        """Frames per trunk call (None: all at once). Bounds memory; output is unchanged."""
        self.chunk_batch_size: int | None = None
        """8-frame chunks / decoder windows per temporal call (None: all at once)."""
        self.runtime = VAERuntime()
        self.apply_runtime(runtime or VAERuntime())

    def apply_runtime(self, runtime: VAERuntime) -> None:
        """Choose how the model runs (see :class:`VAERuntime`); the weights are untouched."""
        self.trunk.set_fused_group_norm_silu(runtime.fused_group_norm_silu)
        set_fused_group_norm_silu(self, runtime.fused_group_norm_silu)
        set_nhwc_ops(self, runtime.fused_nhwc_ops)
        self.trunk.fold_upsample = runtime.fold_upsample_conv
        self.trunk.gradient_checkpointing = runtime.gradient_checkpointing
        set_checkpointing(self, runtime.gradient_checkpointing)
        if runtime.channels_last != self.runtime.channels_last:
            self.set_channels_last(runtime.channels_last)
        self.trunk.set_compile(runtime.compile_trunk)
        self.runtime = runtime

    def set_channels_last(self, enabled: bool) -> None:
        """NHWC / NDHWC weights and activations (cuDNN's fast layouts for bf16 convs).
        Same maths; call again after ``load_state_dict`` only if it replaced parameters."""
        self.trunk.set_channels_last(enabled)
        fmt = torch.channels_last_3d if enabled else torch.contiguous_format
        self.temporal_encoder.to(memory_format=fmt)
        self.temporal_decoder.to(memory_format=fmt)
        self.runtime = self.runtime.model_copy(update={"channels_last": enabled})

    # ----------------------------------------------------------------- normalisation
    def set_latent_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store per-channel latent statistics (measured with ``mugv-vae stats``)."""
        c = self.config.latent_channels
        mean, std = torch.as_tensor(mean).flatten(), torch.as_tensor(std).flatten()
        if mean.numel() != c or std.numel() != c:
            raise ValueError(
                f"latent stats must have {c} entries, got {mean.numel()}, {std.numel()}"
            )
        if not bool((std > 0).all()):
            raise ValueError(f"latent_std must be positive, got {std.tolist()}")
        self.latent_mean.copy_(mean)
        self.latent_std.copy_(std)

    def normalize(self, z_BCTHW: torch.Tensor) -> torch.Tensor:
        m = self.latent_mean.to(z_BCTHW.dtype).view(1, -1, 1, 1, 1)
        s = self.latent_std.to(z_BCTHW.dtype).view(1, -1, 1, 1, 1)
        return (z_BCTHW - m) / s

    def denormalize(self, z_BCTHW: torch.Tensor) -> torch.Tensor:
        m = self.latent_mean.to(z_BCTHW.dtype).view(1, -1, 1, 1, 1)
        s = self.latent_std.to(z_BCTHW.dtype).view(1, -1, 1, 1, 1)
        return z_BCTHW * s + m

    # ----------------------------------------------------------------- building blocks
    def encode_features(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        """Trunk features of every frame, ``[B, C_feat, T, H/8, W/8]``."""
        b, c, t, h, w = video_BCTHW.shape
        frames_NCHW = video_BCTHW.transpose(1, 2).reshape(b * t, c, h, w)
        size = self.frame_batch_size or b * t
        f_NCHW = torch.cat([self.trunk.encode(part) for part in frames_NCHW.split(size)])
        return f_NCHW.view(b, t, *f_NCHW.shape[1:]).transpose(1, 2)

    def _moments(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        return streaming.encode_moments(self, video_BCTHW)

    def encode_posterior(self, video_BCTHW: torch.Tensor) -> DiagonalGaussian:
        """Posterior over raw (un-normalised) latents ``[B, 24, 1+k, H/8, W/8]``."""
        check_video(video_BCTHW)
        return DiagonalGaussian(self._moments(video_BCTHW))

    def encode_raw(
        self,
        video_BCTHW: torch.Tensor,
        sample: bool = False,
        generator: torch.Generator | None = None,
        tile: int | None = None,
        tile_overlap: int = 64,
    ) -> torch.Tensor:
        """Raw latents: the posterior mean (or a sample). ``tile`` (pixels) bounds memory."""
        check_video(video_BCTHW)

        def run(x: torch.Tensor) -> torch.Tensor:
            post = DiagonalGaussian(self._moments(x))
            return post.sample(generator) if sample else post.mode()

        if tile is None:
            return run(video_BCTHW)
        return tiled_apply(
            run, video_BCTHW, tile, tile_overlap, Fraction(1, 8), align=SPATIAL_COMPRESSION
        )

    def encode(
        self,
        video_BCTHW: torch.Tensor,
        sample: bool = False,
        generator: torch.Generator | None = None,
        tile: int | None = None,
        tile_overlap: int = 64,
    ) -> torch.Tensor:
        """Video ``[B, 3, 1+8k, H, W]`` in [-1, 1] -> normalised latents ``[B, 24, 1+k, H/8, W/8]``."""
        return self.normalize(self.encode_raw(video_BCTHW, sample, generator, tile, tile_overlap))

    def decode_features(self, z_BCKHW: torch.Tensor, window: int = 8) -> torch.Tensor:
        """Raw latents -> trunk features ``[B, C_feat, 8K - 7, h, w]`` via windows of R latents."""
        if window < 1:
            raise ValueError(f"decoder window must be >= 1 latent, got {window}")
        f_BCTHW = streaming.decode_windows(self, z_BCKHW, window, self.chunk_batch_size)
        return f_BCTHW[:, :, TIME_COMPRESSION - 1 :]

    def decode_raw(
        self,
        z_BCKHW: torch.Tensor,
        window: int = 8,
        tile: int | None = None,
        tile_overlap: int = 8,
    ) -> torch.Tensor:
        """Raw latents ``[B, 24, 1+k, h, w]`` -> video ``[B, 3, 1+8k, 8h, 8w]``.

        ``tile`` and ``tile_overlap`` are in latents (spatial tiling bounds memory).
        """
        if z_BCKHW.ndim != 5 or z_BCKHW.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"latents must have shape [B, {self.config.latent_channels}, K, h, w], "
                f"got {tuple(z_BCKHW.shape)}"
            )

        if window < 1:
            raise ValueError(f"decoder window must be >= 1 latent, got {window}")

        def run(z: torch.Tensor) -> torch.Tensor:
            return streaming.decode_video(self, z, window)

        if tile is None:
            return run(z_BCKHW)
        return tiled_apply(run, z_BCKHW, tile, tile_overlap, SPATIAL_COMPRESSION)

    def decode(
        self,
        latents_BCKHW: torch.Tensor,
        window: int = 8,
        tile: int | None = None,
        tile_overlap: int = 8,
    ) -> torch.Tensor:
        """Normalised latents (as ``encode`` returns them) -> video in about [-1, 1]."""
        return self.decode_raw(self.denormalize(latents_BCKHW), window, tile, tile_overlap)

    def forward(
        self,
        video_BCTHW: torch.Tensor,
        window: int = 8,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        """Training pass: reconstruction and posterior (raw latent space)."""
        posterior = self.encode_posterior(video_BCTHW)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.decode_raw(z, window), posterior

    @property
    def device(self) -> torch.device:
        return self.latent_mean.device

    # ----------------------------------------------------------------- checkpoints
    @classmethod
    def from_pretrained(cls, path, device="cpu", runtime: VAERuntime | None = None) -> MUGVAE:
        """Load a VAE checkpoint folder (``mugv.vae-checkpoint``) into a model (eval mode) that
        runs with ``runtime`` (default: plain PyTorch, no budget)."""
        ckpt = read_checkpoint(path)
        model = cls(ckpt.config, runtime)
        missing, unexpected = model.load_state_dict(ckpt.state_dict, strict=False)
        if missing or unexpected:
            raise FormatError(
                f"{path}: weights do not match the config: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        return model.to(device).eval()

    def save_pretrained(self, path, extra: dict | None = None):
        """Write this model as a VAE checkpoint folder (atomic)."""
        return save_checkpoint(self, path, extra)
