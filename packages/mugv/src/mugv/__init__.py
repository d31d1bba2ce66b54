"""mugv: the whole stack in one install, and ``mugv demo`` (the tiny pipeline with a report)."""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("mugv")
except _PackageNotFoundError:  # running from a source tree (PYTHONPATH=packages/*/src)
    __version__ = "0+source"
