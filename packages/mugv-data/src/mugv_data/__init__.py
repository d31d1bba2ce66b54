"""Video curation for mugv: decode, shot split, filters, captions, dedup -> clip shards."""

from importlib.metadata import version as _version

__version__ = _version("mugv-data")
