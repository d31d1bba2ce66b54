"""MUG-DiT pre-training for mugv on latent shards through Megatron-Core.

Public API at the top level (imported on first use: ``import mugv_dit`` stays light):
:func:`build_model` (the one way to construct a MUGDiT) and :func:`write_random_export` (a
randomly initialised DiT as a ``mugv.dit-export`` folder).
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("mugv-dit")
except PackageNotFoundError:  # run from a source tree on PYTHONPATH (e.g. the GPU box)
    __version__ = "0+source"


_LAZY = {
    "build_model": "mugv_dit.build",
    "write_random_export": "mugv_dit.interop.export",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mugv_dit' has no attribute {name!r}")
