"""The mugv 8x8x8 video VAE: train, evaluate, encode clip shards to latent shards."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("mugv-vae")
except PackageNotFoundError:  # running from a source tree on PYTHONPATH, not installed
    __version__ = "0.1.0+source"
