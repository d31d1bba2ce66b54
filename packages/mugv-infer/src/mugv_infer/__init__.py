"""Text/image-to-video generation from mugv weights (T2V, I2V, TI2V) and enhancement.

Importing the package is cheap: each public name is imported from its module on first use,
so ``mugv-infer --help`` loads no diffusers, transformers or peft. Importing it also makes
its pipelines known to diffusers (``DiffusionPipeline.from_pretrained`` of a saved folder;
:mod:`mugv_infer.folder`), at once if diffusers is imported, else when it is.
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
    from mugv_infer.enhancer import MUGVEnhancePipeline
    from mugv_infer.limits import DEFAULT_NEGATIVE_PROMPT
    from mugv_infer.models import MUGDiTTransformer3DModel
    from mugv_infer.models.vae import AutoencoderMUGV
    from mugv_infer.pipeline import MUGVPipeline, MUGVPipelineOutput
    from mugv_infer.scheduler import MUGVFlowEulerScheduler

# public name -> the module defining it (imported on first access)
_HOME = {
    "AutoencoderMUGV": "mugv_infer.models.vae",
    "DEFAULT_NEGATIVE_PROMPT": "mugv_infer.limits",
    "MUGDiTTransformer3DModel": "mugv_infer.models",
    "MUGVEnhancePipeline": "mugv_infer.enhancer",
    "MUGVFlowEulerScheduler": "mugv_infer.scheduler",
    "MUGVPipeline": "mugv_infer.pipeline",
    "MUGVPipelineOutput": "mugv_infer.pipeline",
}

__all__ = [
    "DEFAULT_NEGATIVE_PROMPT",
    "AutoencoderMUGV",
    "MUGDiTTransformer3DModel",
    "MUGVEnhancePipeline",
    "MUGVFlowEulerScheduler",
    "MUGVPipeline",
    "MUGVPipelineOutput",
    "__version__",
]


# diffusers' base classes, resolvable here (not exported): loading a component that
# model_index.json names ["mugv_infer", CLASS] looks up its loadable base classes in the
# library itself (diffusers.pipelines.pipeline_loading_utils.get_class_obj_and_candidates)
_DIFFUSERS_BASES = {"ModelMixin": "diffusers", "SchedulerMixin": "diffusers"}


def __getattr__(name: str):
    home = _HOME.get(name) or _DIFFUSERS_BASES.get(name)
    if home is None:
        raise AttributeError(f"module 'mugv_infer' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)


def _install_registration() -> None:
    from mugv_infer.folder import install_registration

    install_registration()


_install_registration()
