"""Text/image-to-video generation from mugv weights (T2V, I2V, TI2V) and enhancement.

Importing the package is cheap: each public name is imported from its module on first use,
so ``mugv-infer --help`` loads no diffusers, transformers or peft.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version
from typing import TYPE_CHECKING

try:
    __version__ = _version("mugv-infer")
except _PackageNotFoundError:  # running from a source tree (PYTHONPATH=packages/*/src)
    __version__ = "0+source"

if TYPE_CHECKING:
    from mugv_infer.models import MUGDiTTransformer3DModel
    from mugv_infer.pipeline import DEFAULT_NEGATIVE_PROMPT, MUGVPipeline, MUGVPipelineOutput
    from mugv_infer.scheduler import MUGVFlowEulerScheduler

# public name -> the module defining it (imported on first access)
_HOME = {
    "DEFAULT_NEGATIVE_PROMPT": "mugv_infer.pipeline",
    "MUGDiTTransformer3DModel": "mugv_infer.models",
    "MUGVFlowEulerScheduler": "mugv_infer.scheduler",
    "MUGVPipeline": "mugv_infer.pipeline",
    "MUGVPipelineOutput": "mugv_infer.pipeline",
}

__all__ = [
    "DEFAULT_NEGATIVE_PROMPT",
    "MUGDiTTransformer3DModel",
    "MUGVFlowEulerScheduler",
    "MUGVPipeline",
    "MUGVPipelineOutput",
    "__version__",
]


def __getattr__(name: str):
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'mugv_infer' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
