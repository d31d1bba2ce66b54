"""Architecture of the mugv video VAE (plain PyTorch; no training code here)."""

from mugv_vae.model.distribution import DiagonalGaussian
from mugv_vae.model.vae import DECODER_WINDOWS, MUGVAE, check_video, latent_frames

__all__ = ["DECODER_WINDOWS", "DiagonalGaussian", "MUGVAE", "check_video", "latent_frames"]
