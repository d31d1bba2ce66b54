"""Fused Triton kernels for the mugv DiT and VAE, with exact PyTorch fallbacks."""

from importlib.metadata import version as _version

__version__ = _version("mugv-kernels")
