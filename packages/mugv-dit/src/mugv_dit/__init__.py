"""MUG-DiT pre-training for mugv on latent shards through Megatron-Core."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("mugv-dit")
except PackageNotFoundError:  # run from a source tree on PYTHONPATH (e.g. the GPU box)
    __version__ = "0+source"
