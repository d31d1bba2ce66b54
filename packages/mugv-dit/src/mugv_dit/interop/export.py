"""DiT inference export (mugv_formats ``mugv.dit-export``) <-> training checkpoints.

The export holds the full (TP=1) state dict of MUGDiT under mugv's own parameter names plus
the ModelConfig (the architecture; format 1.0 exports also stored the runtime settings of the
run that wrote them, which loading ignores: a model's RuntimeConfig is chosen when built); ``import`` loads it into a model of any TP size by slicing each tensor-parallel
parameter along its partition dim.

Every export writer claims its output first (:func:`claim_export`, the rule of
``mugv_formats.outputs.claim_output``): a new or empty folder is written; a complete
``mugv.dit-export`` there is replaced only with ``overwrite``; anything else (a run folder, a
user's folder, another artifact, a file, a link) is refused, as is an output that is, holds or
sits in one of the writer's inputs. The claim comes before the work.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from mugv_formats import (
    DIT_EXPORT_FORMAT,
    FormatVersion,
    load_weights_folder,
    save_weights_folder,
)
from mugv_formats.outputs import OutputClaim, claim_output
from pydantic import ValidationError

from mugv_dit import __version__
from mugv_dit.config import LEGACY_MODEL_RUNTIME_FIELDS, ModelConfig, RuntimeConfig, resolve_config
from mugv_dit.lora.config import LoraConfig
from mugv_dit.lora.names import is_adapter_name

ARCHITECTURE = "MUGDiT"


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict without Megatron's ``_extra_state`` entries (TP=1 models only)."""
    return {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}


def load_full_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full (unsharded) state dict into a model of any TP size."""
    from megatron.core import parallel_state

    tp = parallel_state.get_tensor_model_parallel_world_size()
    rank = parallel_state.get_tensor_model_parallel_rank()
    # a pipeline stage holds part of the model under local block indices
    global_name = getattr(model, "global_name", lambda name: name)
    params = {global_name(k): v for k, v in model.named_parameters()}
    expected = set(params)
    # LoRA adapters (mugv_dit.lora) keep their initial values when the state has none
    missing = sorted(k for k in expected - set(state) if not is_adapter_name(k))
    unexpected = sorted(set(state) - expected)
    if getattr(model, "pp_size", 1) > 1:
        unexpected = []  # the other stages' parameters
    if missing or unexpected:
        raise ValueError(
            f"state dict does not fit the model: missing {missing[:5]} ({len(missing)}), "
            f"unexpected {unexpected[:5]} ({len(unexpected)})"
        )
    with torch.no_grad():
        for name, param in params.items():
            if name not in state:  # an adapter (see above)
                continue
            full = state[name]
            if getattr(param, "tensor_model_parallel", False) and tp > 1:
                dim = param.partition_dim
                full = full.chunk(tp, dim=dim)[rank]
            if tuple(full.shape) != tuple(param.shape):
                raise ValueError(
                    f"{name}: shape {tuple(full.shape)} does not fit parameter {tuple(param.shape)}"
                )
            param.copy_(full.to(param.dtype))


def claim_export(
    output: str | Path, *, overwrite: bool = False, inputs=(), what: str = "--output"
) -> OutputClaim:
    """Check that an export may be written at ``output`` (module doc) and prepare it."""
    return claim_output(output, DIT_EXPORT_FORMAT, overwrite=overwrite, inputs=inputs, what=what)


def save_export(
    path: str | Path,
    model_cfg: ModelConfig,
    state: dict,
    extra: dict | None = None,
    *,
    overwrite: bool = False,
    inputs=(),
    claim: OutputClaim | None = None,
) -> Path:
    """Write a ``mugv.dit-export`` folder at ``path`` (claimed here unless ``claim`` is the
    caller's claim of it, made before its work); returns ``path``."""
    claim = claim or claim_export(path, overwrite=overwrite, inputs=inputs)
    save_weights_folder(
        claim.write_path,
        format=DIT_EXPORT_FORMAT,
        architecture=ARCHITECTURE,
        config=model_cfg.model_dump(mode="json"),
        state_dict=state,
        extra=extra or {},
        producer=f"mugv-dit {__version__}",
    )
    claim.commit()
    return claim.path


def load_export(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read a ``mugv.dit-export`` folder -> (ModelConfig, full state dict)."""
    folder = load_weights_folder(path, format=DIT_EXPORT_FORMAT)
    if folder.architecture != ARCHITECTURE:
        raise ValueError(f"{path}: architecture {folder.architecture!r} is not {ARCHITECTURE!r}")
    return stored_model_config(folder.config, folder.version, where=path), folder.state_dict


def stored_model_config(config: dict, version: str, *, where) -> ModelConfig:
    """The ModelConfig of an export's ``config`` at format ``version`` (1.0 exports also hold
    the writer's runtime settings: left out)."""
    if FormatVersion.parse(version, where=where) < FormatVersion(1, 1):
        config = {k: v for k, v in config.items() if k not in LEGACY_MODEL_RUNTIME_FIELDS}
    try:
        return ModelConfig(**config)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'config'}: {err['msg']} (value {err['input']!r})"
            for err in e.errors()
        )
        raise ValueError(
            f"{where}/config.json: config does not fit ModelConfig: {problems}"
        ) from None


def architecture_differences(exported: ModelConfig, run: ModelConfig) -> list[str]:
    """The fields where an export's architecture differs from a run's, each as
    ``model.FIELD=RUN here, EXPORT in the export``; empty when the weights fit."""
    theirs, ours = exported.model_dump(), run.model_dump()
    return [
        f"model.{k}={ours[k]!r} here, {theirs[k]!r} in the export"
        for k in ours
        if theirs[k] != ours[k]
    ]


def build_model_from_export(
    path: str | Path, *, dtype: torch.dtype = torch.float32, runtime: RuntimeConfig | None = None
):
    """A MUGDiT (current TP layout; initialises one local process if needed) with the
    export's weights, run with ``runtime`` settings (default: RuntimeConfig())."""
    from mugv_dit.build import build_model
    from mugv_dit.parallel import init_distributed, parallel_context

    init_distributed(1)
    model_cfg, state = load_export(path)
    model = build_model(model_cfg, dtype=dtype, layout=parallel_context(), runtime=runtime)
    load_full_state_dict(model, state)
    return model


def write_random_export(
    model_cfg: ModelConfig,
    out_dir: str | Path,
    *,
    seed: int,
    dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
) -> Path:
    """Write a randomly initialised MUGDiT of architecture ``model_cfg`` (drawn from
    ``seed``, as a run of that seed starts) as a ``mugv.dit-export`` folder; returns it.

    Runs in one local process (TP=1): sets up and tears down Megatron's groups unless they
    are already up; the caller's global RNG state is left as it was."""
    from megatron.core import parallel_state

    from mugv_dit.build import build_model
    from mugv_dit.megatron_patches.cuda_on_cpu import cpu_megatron
    from mugv_dit.parallel import destroy_distributed, init_distributed

    claim = claim_export(out_dir, overwrite=overwrite, what="export folder")
    own_groups = not parallel_state.model_parallel_is_initialized()
    init_distributed(1)
    try:
        with cpu_megatron(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            state = full_state_dict(build_model(model_cfg, dtype=dtype))
    finally:
        if own_groups:
            destroy_distributed()
    return save_export(out_dir, model_cfg, state, {"weights": "random", "seed": seed}, claim=claim)


def run_checkpoint(run_dir: str | Path, step: int | None = None) -> Path:
    """The checkpoint folder of a run at ``step`` (default: the latest)."""
    from mugv_dit.checkpoint import latest_checkpoint, step_dir

    root = Path(run_dir) / "checkpoints"
    ckpt = step_dir(root, step) if step is not None else latest_checkpoint(root)
    if ckpt is None or not ckpt.is_dir():
        raise ValueError(f"{run_dir}: no checkpoint {'at step ' + str(step) if step else ''} found")
    return ckpt


def checkpoint_state(
    ckpt: str | Path,
    model_cfg: ModelConfig,
    *,
    weights: str = "ema",
    lora: LoraConfig | None = None,
) -> dict[str, torch.Tensor]:
    """The full (TP=1) state dict of the ``weights`` (``ema`` / ``model``) of a training
    checkpoint, read in one local process; with ``lora`` (the run's adapters) the adapters
    are in it as ``<linear>.lora_A`` / ``.lora_B``."""
    from mugv_dit.build import build_model
    from mugv_dit.checkpoint import load_model_weights
    from mugv_dit.lora.adapters import apply_lora
    from mugv_dit.megatron_patches.cuda_on_cpu import cpu_megatron
    from mugv_dit.parallel import init_distributed

    init_distributed(1)
    with cpu_megatron():
        model = build_model(model_cfg)
        if lora is not None:
            apply_lora(model, lora)
        load_model_weights(Path(ckpt), model, which=weights)
    return full_state_dict(model)


def export_checkpoint(
    ckpt: str | Path,
    model_cfg: ModelConfig,
    output: str | Path,
    *,
    weights: str = "ema",
    extra: dict | None = None,
    overwrite: bool = False,
    inputs=(),
    lora: LoraConfig | None = None,
    merge_lora: bool = False,
) -> Path:
    """Write the ``weights`` (``ema`` / ``model``) of a training checkpoint of architecture
    ``model_cfg`` as a ``mugv.dit-export`` folder, in one local process (TP=1); ``extra``
    goes into the export's metadata; ``output`` is claimed first (``inputs``: the run
    folder and anything else the export is made from, besides ``ckpt``). A LoRA run
    (``lora``: its adapters) is exported with ``merge_lora``: the adapters folded into the
    weights (:func:`mugv_dit.lora.merge.merge_lora_state`)."""
    from mugv_dit.lora.merge import merge_lora_state

    if lora is not None and not merge_lora:
        raise ValueError(
            "the run trained LoRA adapters: export them folded into the weights (--merge-lora) "
            "or as a peft adapter folder (export-lora)"
        )
    if lora is None and merge_lora:
        raise ValueError("--merge-lora: the run trained no LoRA adapters (no lora section)")
    claim = claim_export(output, overwrite=overwrite, inputs=[ckpt, *inputs])
    state = checkpoint_state(ckpt, model_cfg, weights=weights, lora=lora)
    if lora is not None:
        state = merge_lora_state(state, lora.scale)
        extra = {**(extra or {}), "lora": {"merged": True, **lora.model_dump(mode="json")}}
    return save_export(output, model_cfg, state, extra, claim=claim)


def export_lora_adapter(
    ckpt: str | Path,
    model_cfg: ModelConfig,
    lora: LoraConfig,
    output: str | Path,
    *,
    weights: str = "ema",
    base_model: str | None = None,
    overwrite: bool = False,
    inputs=(),
) -> Path:
    """Write the LoRA adapters of a training checkpoint as a peft adapter folder
    (:mod:`mugv_dit.lora.peft_files`); ``base_model``: the export they were trained on."""
    from mugv_dit.lora.peft_files import save_peft_adapter

    state = checkpoint_state(ckpt, model_cfg, weights=weights, lora=lora)
    return save_peft_adapter(
        output, state, lora, base_model=base_model, overwrite=overwrite, inputs=[ckpt, *inputs]
    )


def _run_config(run_dir: Path, weights: str):
    cfg_path = run_dir / "resolved_config.yaml"
    if not cfg_path.is_file():
        raise ValueError(f"{run_dir} is not a mugv-dit run (no resolved_config.yaml)")
    cfg = resolve_config(yaml.safe_load(cfg_path.read_text()))
    if weights == "ema" and cfg.train.ema_decay is None:
        raise ValueError(f"{run_dir} trained without EMA; use --weights model")
    return cfg


def export_run(
    run_dir: str | Path,
    output: str | Path,
    *,
    weights: str = "ema",
    step=None,
    overwrite: bool = False,
    merge_lora: bool = False,
):
    """Export the EMA (or raw) weights of a run's checkpoint, in one local process (TP=1);
    a LoRA run's adapters folded in with ``merge_lora``."""
    run_dir = Path(run_dir)
    cfg = _run_config(run_dir, weights)
    ckpt = run_checkpoint(run_dir, step)
    extra = {"run": str(run_dir), "checkpoint": ckpt.name, "weights": weights}
    return export_checkpoint(
        ckpt,
        cfg.model,
        output,
        weights=weights,
        extra=extra,
        overwrite=overwrite,
        inputs=[run_dir],
        lora=cfg.lora,
        merge_lora=merge_lora,
    )


def export_run_lora(
    run_dir: str | Path,
    output: str | Path,
    *,
    weights: str = "ema",
    step=None,
    overwrite: bool = False,
):
    """A LoRA run's adapters (EMA or raw) as a peft adapter folder."""
    run_dir = Path(run_dir)
    cfg = _run_config(run_dir, weights)
    if cfg.lora is None:
        raise ValueError(f"{run_dir} trained no LoRA adapters (no lora section)")
    ckpt = run_checkpoint(run_dir, step)
    return export_lora_adapter(
        ckpt,
        cfg.model,
        cfg.lora,
        output,
        weights=weights,
        base_model=cfg.train.init_from,
        overwrite=overwrite,
        inputs=[run_dir],
    )
