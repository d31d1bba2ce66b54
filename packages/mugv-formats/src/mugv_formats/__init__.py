"""On-disk format contract between mugv stages: clip shards, latent shards, checkpoints, preference data."""

from importlib.metadata import version as _version

__version__ = _version("mugv-formats")
