"""The mugv 8x8x8 video VAE: train, evaluate, encode clip shards to latent shards."""

from importlib.metadata import version as _version

__version__ = _version("mugv-vae")
