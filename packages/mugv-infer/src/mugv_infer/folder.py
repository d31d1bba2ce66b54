"""The saved-pipeline folder: diffusers' own layout, loadable by ``DiffusionPipeline``.

A folder written by :meth:`MUGVPipeline.save_pretrained` (or ``mugv-infer convert``)::

    model_index.json     {"_class_name": "MUGVPipeline", "_diffusers_version": ...,
                          "transformer": ["mugv_infer", "MUGDiTTransformer3DModel"],
                          "vae": ["mugv_infer", "AutoencoderMUGV"],
                          "scheduler": ["mugv_infer", "MUGVFlowEulerScheduler"],
                          "text_encoder": ["transformers", "T5EncoderModel"],
                          "tokenizer": ["transformers", "T5TokenizerFast"]}   (written last)
    transformer/         config.json + diffusion_pytorch_model[.VARIANT].safetensors
    vae/                 config.json + diffusion_pytorch_model[.VARIANT].safetensors
    scheduler/           scheduler_config.json
    text_encoder/        config.json + model[.VARIANT].safetensors       (optional)
    tokenizer/           tokenizer files                                  (optional)
    README.md            model card (``mugv-infer convert``)

Components of this package are named by the library ``mugv_infer``: diffusers resolves such a
library from ``sys.modules`` (it never imports a module a folder names), so ``import
mugv_infer`` comes before ``DiffusionPipeline.from_pretrained``. ``_class_name`` is looked up
in the ``diffusers`` namespace, so importing ``mugv_infer`` also makes its pipeline classes
resolvable there (:func:`expose_in_diffusers`, imported on first use; at once when diffusers
is already imported, else right after it is). ``MUGVPipeline.from_pretrained`` needs none of this.

Folders of the previous layout (``pipeline.json``, ``vae/`` a ``mugv.vae-checkpoint``) still
load through ``MUGVPipeline.from_pretrained``, with a ``FutureWarning``; saving them again
writes this layout.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import sys
import types
import warnings
from pathlib import Path

MODEL_INDEX = "model_index.json"
LEGACY_INDEX = "pipeline.json"
LIBRARY = "mugv_infer"
"""The library name ``model_index.json`` gives this package's components."""
PIPELINE_CLASSES = {
    "MUGVPipeline": "mugv_infer.pipeline",
    "MUGVEnhancePipeline": "mugv_infer.enhancer",
}
"""Pipeline classes registered in the ``diffusers`` namespace, and their modules."""


def _dtype_keyword() -> str:
    """``from_pretrained``'s dtype argument: ``dtype`` from diffusers 0.42 on (``torch_dtype``
    is deprecated there), ``torch_dtype`` before."""
    from importlib.metadata import version

    major, minor = (int(p) for p in version("diffusers").split(".")[:2])
    return "dtype" if (major, minor) >= (0, 42) else "torch_dtype"


DTYPE_KEYWORD = _dtype_keyword()


# ---------------------------------------------------------------------- diffusers registry
def expose_in_diffusers(module: types.ModuleType) -> None:
    """Let ``diffusers.<name>`` resolve each of :data:`PIPELINE_CLASSES` (what
    ``DiffusionPipeline.from_pretrained`` looks ``model_index.json``'s ``_class_name`` up
    in), imported on first access like diffusers' own names: the module's class gets a
    subclass whose ``__getattr__`` knows them. Idempotent."""
    base = type(module)
    if getattr(base, "_mugv_infer_names", False):
        return

    class WithMUGVPipelines(base):
        _mugv_infer_names = True

        def __getattr__(self, name: str):
            home = PIPELINE_CLASSES.get(name)
            if home is None:
                if base is types.ModuleType:
                    raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
                return base.__getattr__(self, name)
            value = getattr(importlib.import_module(home), name)
            setattr(self, name, value)
            return value

    module.__class__ = WithMUGVPipelines


class _ExposeAfterImport(importlib.abc.MetaPathFinder):
    """Runs :func:`expose_in_diffusers` right after ``diffusers`` is imported (installed by
    ``import mugv_infer`` when diffusers is not imported yet), then leaves ``sys.meta_path``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "diffusers":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module):
            run(module)
            # diffusers' __init__ puts a lazy module in sys.modules in place of ``module``
            expose_in_diffusers(sys.modules.get(fullname, module))

        loader.exec_module = exec_module
        return spec


def install_registration() -> None:
    """Expose the pipelines in diffusers now if it is imported, else once it is."""
    if "diffusers" in sys.modules:
        expose_in_diffusers(sys.modules["diffusers"])
    elif not any(isinstance(f, _ExposeAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _ExposeAfterImport())


# ---------------------------------------------------------------------- model_index.json
def library_names(pipe) -> dict[str, tuple[str, str]]:
    """``model_index.json`` entries of ``pipe``'s components from this package under the
    library ``mugv_infer`` (diffusers would record the defining module, which a later
    refactor may move)."""
    out = {}
    for name, value in pipe.config.items():
        if name.startswith("_") or not isinstance(value, (list, tuple)) or len(value) != 2:
            continue
        library, cls = value
        if isinstance(library, str) and library.split(".")[0] == LIBRARY:
            out[name] = (LIBRARY, cls)
    return out


def folder_layout(path: str | Path) -> str:
    """``"diffusers"`` (a ``model_index.json``), ``"legacy"`` (``pipeline.json`` only), or
    ValueError naming the folder."""
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder (a saved MUGVPipeline is a local folder)")
    if (root / MODEL_INDEX).is_file():
        return "diffusers"
    if (root / LEGACY_INDEX).is_file():
        return "legacy"
    raise ValueError(
        f"{root} is not a saved MUGVPipeline (no {MODEL_INDEX}; a folder written before the "
        f"diffusers layout has {LEGACY_INDEX})"
    )


def check_model_index(path: Path) -> dict:
    """The folder's ``model_index.json`` as a dict; ValueError naming file and field."""
    file = path / MODEL_INDEX
    try:
        index = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{file}: not readable JSON ({e})") from None
    if not isinstance(index, dict) or not isinstance(index.get("_class_name"), str):
        raise ValueError(f"{file}: no _class_name naming the pipeline class")
    for name in ("transformer", "vae", "scheduler"):
        entry = index.get(name)
        if not (isinstance(entry, list) and len(entry) == 2 and all(entry)):
            raise ValueError(f"{file}: field {name!r} must be [library, class], got {entry!r}")
        if not (path / name).is_dir():
            raise ValueError(f"{file} names {name!r} but {path / name} is missing")
    return index


def refuse_complete_legacy(path: str | Path, kind: str, overwrite: bool, what: str) -> None:
    """A complete saved pipeline of the old layout (our marker and ``pipeline.json``, no
    ``model_index.json``) is replaced only with ``overwrite`` (the folder claim, which knows
    only the new header, would take it for an interrupted save and resume it)."""
    from mugv_formats.outputs import OutputError, marker_kind

    root = Path(path)
    if overwrite or not root.is_dir() or root.is_symlink() or (root / MODEL_INDEX).exists():
        return
    mark = marker_kind(root)
    if mark is not None and mark[0] == kind and (root / LEGACY_INDEX).is_file():
        raise OutputError(
            f"{what} {root} already holds a complete saved pipeline (old layout, "
            f"{LEGACY_INDEX}) written by mugv-infer; pass --overwrite (overwrite=True) to "
            f"replace it, or choose another {what}"
        )


def warn_legacy(path: Path) -> None:
    warnings.warn(
        f"{path} is a saved MUGVPipeline of the old layout ({LEGACY_INDEX}, VAE as a "
        "mugv.vae-checkpoint); it loads for now, but the layout is deprecated: save it again "
        "with MUGVPipeline.from_pretrained(old).save_pretrained(new) to get the diffusers "
        f"layout ({MODEL_INDEX}) that DiffusionPipeline.from_pretrained reads",
        FutureWarning,
        stacklevel=3,
    )


def load_legacy(cls, root: Path, torch_dtype):
    """A folder of the old layout -> ``cls`` (a MUGVPipeline class), weights checked."""
    import torch
    from transformers import AutoTokenizer, T5EncoderModel

    from mugv_infer.checks import check_finite_weights
    from mugv_infer.models.transformer import MUGDiTTransformer3DModel
    from mugv_infer.models.vae import AutoencoderMUGV
    from mugv_infer.scheduler import MUGVFlowEulerScheduler

    warn_legacy(root)
    transformer = MUGDiTTransformer3DModel.from_pretrained(
        root / "transformer", torch_dtype=torch_dtype
    )
    check_finite_weights(transformer, root / "transformer", "transformer")
    vae = AutoencoderMUGV.from_checkpoint(root / "vae")
    check_finite_weights(vae.model, root / "vae", "vae")
    vae = torch.nn.Module.to(vae, torch_dtype)  # ModelMixin.to warns about fp32 modules
    scheduler = MUGVFlowEulerScheduler.from_pretrained(root / "scheduler")
    tokenizer = encoder = None
    if (root / "text_encoder").is_dir():
        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
        encoder = T5EncoderModel.from_pretrained(
            root / "text_encoder", local_files_only=True, torch_dtype=torch_dtype
        ).eval()
        check_finite_weights(encoder, root / "text_encoder", "text encoder")
    return cls(transformer, vae, scheduler, tokenizer, encoder)


def check_loaded(pipe, root: Path) -> None:
    """No NaN / inf in any loaded component (naming the component's folder, file, tensor)."""
    from mugv_infer.checks import check_finite_weights

    for name in ("transformer", "vae", "text_encoder"):
        module = getattr(pipe, name, None)
        if module is not None:
            check_finite_weights(module, root / name, name.replace("_", " "))
