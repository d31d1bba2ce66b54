"""Video curation for mugv: decode, shot split, filters, captions, dedup -> clip shards."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("mugv-data")
except PackageNotFoundError:  # running from a source tree (PYTHONPATH), not installed
    __version__ = "0.0.0+unknown"
