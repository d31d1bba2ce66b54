"""Text/image-to-video generation from mugv weights (T2V, I2V, TI2V) and enhancement."""

from importlib.metadata import version as _version

__version__ = _version("mugv-infer")
