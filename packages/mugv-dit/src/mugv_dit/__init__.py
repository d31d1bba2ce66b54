"""MUG-DiT pre-training for mugv on latent shards through Megatron-Core."""

from importlib.metadata import version as _version

__version__ = _version("mugv-dit")
