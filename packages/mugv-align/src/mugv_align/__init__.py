"""Post-training for mugv DiTs: SFT with post-hoc EMA, Flow-DPO, Flow-KTO."""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("mugv-align")
except _PackageNotFoundError:  # running from a source tree (PYTHONPATH=packages/*/src)
    __version__ = "0+source"
