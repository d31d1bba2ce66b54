"""Post-training for mugv DiTs: SFT with post-hoc EMA, Flow-DPO, Flow-KTO."""

from importlib.metadata import version as _version

__version__ = _version("mugv-align")
