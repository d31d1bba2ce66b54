"""Text/image-to-video generation from mugv weights (T2V, I2V, TI2V) and enhancement."""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("mugv-infer")
except _PackageNotFoundError:  # running from a source tree (PYTHONPATH=packages/*/src)
    __version__ = "0+source"

from mugv_infer.models import MUGDiTTransformer3DModel
from mugv_infer.pipeline import DEFAULT_NEGATIVE_PROMPT, MUGVPipeline, MUGVPipelineOutput
from mugv_infer.scheduler import MUGVFlowEulerScheduler

__all__ = [
    "DEFAULT_NEGATIVE_PROMPT",
    "MUGDiTTransformer3DModel",
    "MUGVFlowEulerScheduler",
    "MUGVPipeline",
    "MUGVPipelineOutput",
    "__version__",
]
