"""Training checkpoints as Megatron distributed checkpoints (torch_dist).

Layout of ``OUTPUT/checkpoints``::

    step_0000100/    a dist_checkpointing directory: model, EMA, optimizer (sharded tensors)
                     + trainer state (step, sampler cursors) in its common part
    latest           text file naming the last COMPLETE step directory (written last)

Sharded tensors carry global offsets, so a checkpoint re-loads under another TP/DP layout.

Loading never runs code from the run folder: the torch_dist ``.metadata`` pickle is read by
an unpickler that admits only the checkpoint metadata classes (:class:`SafeMetadataReader`),
and ``common.pt`` through ``torch.load(weights_only=True)``
(:class:`SafeCommonLoadStrategy`); anything else raises :class:`UnsafeCheckpointError`
naming the file and the refused class.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import os
import pickle
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.strategies.cached_metadata_filesystem_reader import (
    CachedMetadataFileSystemReader,
)
from megatron.core.dist_checkpointing.strategies.common import TorchCommonLoadStrategy
from mugv_formats import atomic_write_text
from mugv_formats.checkpoint_dirs import checkpoint_step, prune_step_dirs, step_dir_name
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from mugv_dit.lora.names import holds_only_adapters, is_adapter_name
from mugv_dit.megatron_patches.adam_load import adam_state_for_loading, torch_adam_step_on_load
from mugv_dit.megatron_patches.checkpoint_io import filesystem_reader, own_write_results_queue

LATEST = "latest"


class UnsafeCheckpointError(ValueError):
    """A checkpoint file holds something other than checkpoint data (e.g. a planted pickle);
    it is refused without running it."""


# what a torch_dist `.metadata` file may name: the dataclasses and enums of torch's checkpoint
# metadata and planner modules, a few containers, torch.Size, dtypes/layouts/memory formats
_METADATA_MODULES = {
    "torch.distributed.checkpoint.metadata",
    "torch.distributed.checkpoint.planner",
}
_METADATA_CLASSES = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # looks a torch.layout up by its name
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
}


def _admitted(module: str, name: str) -> bool:
    if (module, name) in _METADATA_CLASSES:
        return True
    if module == "torch":
        value = getattr(torch, name, None)
        return isinstance(value, torch.dtype | torch.layout | torch.memory_format)
    if module in _METADATA_MODULES:
        value = getattr(importlib.import_module(module), name, None)
        return isinstance(value, type) and (
            dataclasses.is_dataclass(value) or issubclass(value, enum.Enum)
        )
    return False


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file, where: str):
        super().__init__(file)
        self.where = where

    def find_class(self, module: str, name: str):
        if not _admitted(module, name):
            raise UnsafeCheckpointError(
                f"{self.where}: checkpoint metadata names {module}.{name}, which is not a "
                "checkpoint metadata class; refused (the file was not written by a checkpoint "
                "save, or was tampered with)"
            )
        return super().find_class(module, name)


def read_checkpoint_metadata(path: str | os.PathLike) -> Metadata:
    """Read a torch_dist ``.metadata`` file admitting only checkpoint metadata classes."""
    try:
        with open(path, "rb") as f:
            metadata = _MetadataUnpickler(f, str(path)).load()
    except UnsafeCheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError) as e:
        raise UnsafeCheckpointError(f"{path}: unreadable checkpoint metadata ({e})") from None
    if not isinstance(metadata, Metadata):
        raise UnsafeCheckpointError(
            f"{path}: holds a {type(metadata).__name__}, not checkpoint metadata"
        )
    return metadata


class SafeMetadataReader(CachedMetadataFileSystemReader):
    """Megatron's torch_dist file reader whose ``.metadata`` goes through
    :func:`read_checkpoint_metadata` instead of a plain ``pickle.load``."""

    def read_metadata(self, *args, **kwargs) -> Metadata:
        if self._cached_metadata is None:
            path = self._get_metadata_path(kwargs.get("rank"))
            if not os.path.isfile(path):
                raise ValueError(f"{path}: checkpoint metadata missing (incomplete checkpoint)")
            metadata = read_checkpoint_metadata(path)
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            self._cached_metadata = metadata
        return self._cached_metadata


def _safe_torch_load(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()
        reason = next((r for r in reason if "WeightsUnpickler error" in r), reason[-1:] or [""])
        raise UnsafeCheckpointError(
            f"{path}: holds objects other than tensors and plain data; refused ({reason})"
        ) from None


class SafeCommonLoadStrategy(TorchCommonLoadStrategy):
    """``common.pt`` through ``torch.load(weights_only=True)`` (sharded objects, which this
    trainer does not write, keep Megatron's ``torch.load``, weights-only by default)."""

    def load_common(self, checkpoint_dir):
        path = os.path.join(checkpoint_dir, "common.pt")
        if not os.path.isfile(path):
            raise ValueError(f"{path}: checkpoint common state missing (incomplete checkpoint)")
        return _safe_torch_load(path)


def safe_load(template: dict, path: Path) -> dict:
    """``dist_checkpointing.load`` that never unpickles anything but checkpoint data."""
    if not (path / ".metadata").is_file():
        raise ValueError(
            f"{path / '.metadata'}: checkpoint metadata missing (incomplete checkpoint)"
        )
    # refused here, before torch's collective load would wrap the error in its own
    read_checkpoint_metadata(path / ".metadata")
    _safe_torch_load(path / "common.pt")

    def reader(checkpoint_dir, cache_metadata: bool = False):
        return SafeMetadataReader(checkpoint_dir)

    with filesystem_reader(reader):
        return dist_checkpointing.load(
            template, str(path), common_strategy=SafeCommonLoadStrategy()
        )


def step_dir(root: Path, step: int) -> Path:
    return root / step_dir_name(step)


def _mark_complete(root: Path, path: Path, keep: int) -> None:
    """Rank 0, once every rank finished ``path``: point ``latest`` at it (atomic), then
    remove all but the newest ``keep`` complete checkpoints (0: keep all), never ``path``."""
    atomic_write_text(root / LATEST, path.name + "\n")
    prune_step_dirs(root, keep, protect={path.name}, complete=lambda p: (p / ".metadata").is_file())


def latest_checkpoint(root: Path) -> Path | None:
    """The last complete checkpoint under ``root`` or None."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    if not path.is_dir():
        raise ValueError(f"{pointer} names {path}, which does not exist")
    return path


def clean_partial_checkpoints(root: Path) -> list[Path]:
    """Remove what an interrupted save or prune left under ``root`` (rank 0, at start), by our
    own names only: step folders ``latest`` does not name that are not complete or are newer
    than it (a save killed before ``latest`` moved), ``.deleting-step_*`` folders of a killed
    prune, and temporary ``.latest.*.tmp`` files of a killed pointer write. Nothing else under
    ``root`` is touched. Returns the removed paths."""
    if not root.is_dir():
        return []
    pointer = root / LATEST
    latest = pointer.read_text().strip() if pointer.is_file() else None
    latest_step = checkpoint_step(latest) if latest else None
    removed = []
    for p in sorted(root.iterdir()):
        if p.is_symlink():
            continue
        name = p.name
        step = checkpoint_step(name)
        stale = False
        if step is not None and p.is_dir() and name != latest:
            complete = (p / ".metadata").is_file()
            stale = not complete or latest_step is None or step > latest_step
        elif (
            name.startswith(".deleting-")
            and checkpoint_step(name[10:].rsplit("-", 1)[0]) is not None
        ):
            stale = p.is_dir()
        elif name.startswith(f".{LATEST}.") and name.endswith(".tmp"):
            stale = p.is_file()
        if stale:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
    return removed


def _prepare_dir(root: Path, path: Path) -> None:
    """Create ``path`` for a new checkpoint (rank 0). A directory already there that ``latest``
    does not name was left by a save that never completed (a killed run): it is removed, so
    no stale shard of it survives in the new checkpoint."""
    if dist.get_rank() == 0:
        pointer = root / LATEST
        is_latest = pointer.is_file() and pointer.read_text().strip() == path.name
        if path.exists() and not is_latest:
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
    dist.barrier()


def build_state(model, ema, optimizer, trainer_state: dict | None, *, loading: bool) -> dict:
    """The sharded state dict of a training run (model, EMA, optimizer, trainer counters)."""
    model_sd = model.sharded_state_dict(prefix="model.")
    state = dict(model_sd)
    if ema is not None:
        state.update(_ema_state(ema))
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(
            model_sd,
            is_loading=loading,
            metadata={"distrib_optim_sharding_type": "fully_reshardable"},
        )
    if trainer_state is not None:
        state["trainer"] = trainer_state
    return state


def save_checkpoint(
    root: Path,
    step: int,
    model,
    ema,
    optimizer,
    trainer_state: dict,
    per_rank_saver=None,
    keep: int = 0,
) -> Path:
    """Save a checkpoint; ``latest`` is updated only after every rank finished.

    ``per_rank_saver(path)`` (optional) writes rank-local extras (e.g. loader state) into the
    checkpoint directory before it is declared complete."""
    path = step_dir(root, step)
    _prepare_dir(root, path)
    state = build_state(model, ema, optimizer, trainer_state, loading=False)
    own_write_results_queue()
    dist_checkpointing.save(state, str(path))
    if per_rank_saver is not None:
        per_rank_saver(path)
    dist.barrier()
    if dist.get_rank() == 0:
        _mark_complete(root, path, keep)
    dist.barrier()
    return path


class CheckpointSaver:
    """Saves checkpoints synchronously, or asynchronously (CUDA only) through Megatron's
    AsyncCallsQueue: tensors are staged to host memory at save time and written in the
    background; ``latest`` is updated by a finalize step once every rank has finished."""

    def __init__(self, root: Path, *, async_save: bool = False, keep: int = 0):
        self.root = root
        self.keep = keep  # complete checkpoints kept (newest; 0: all), see _mark_complete
        self.queue = None
        if async_save:
            from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

            self.queue = AsyncCallsQueue(persistent=False)

    def save(self, step, model, ema, optimizer, trainer_state, per_rank_saver=None) -> Path:
        if self.queue is None:
            return save_checkpoint(
                self.root, step, model, ema, optimizer, trainer_state, per_rank_saver, self.keep
            )
        self.wait()  # one checkpoint in flight at a time
        path = step_dir(self.root, step)
        _prepare_dir(self.root, path)
        state = build_state(model, ema, optimizer, trainer_state, loading=False)
        own_write_results_queue()
        request = dist_checkpointing.save(state, str(path), async_sharded_save=True)
        if per_rank_saver is not None:
            per_rank_saver(path)

        def mark_complete(root=self.root, path=path, keep=self.keep):
            if dist.get_rank() == 0:
                _mark_complete(root, path, keep)

        request.add_finalize_fn(mark_complete)
        self.queue.schedule_async_request(request)
        return path

    def poll(self) -> None:
        """Finalize checkpoints whose background writes are done (call on every rank)."""
        if self.queue is not None:
            self.queue.maybe_finalize_async_calls(blocking=False)

    def wait(self) -> None:
        """Block until every scheduled checkpoint is complete."""
        if self.queue is not None:
            self.queue.maybe_finalize_async_calls(blocking=True)

    def close(self) -> None:
        if self.queue is not None:
            self.queue.close()
            self.queue = None


def _ema_state(ema) -> dict:
    """The EMA slot's sharded state dict: a LoRA run's EMA (:func:`holds_only_adapters`)
    keeps only its adapters (its base is the model slot's frozen base; an old checkpoint with
    a whole EMA still loads: the base under ``ema.`` is not read)."""
    state = ema.sharded_state_dict(prefix="ema.")
    if holds_only_adapters(ema):
        state = {k: v for k, v in state.items() if is_adapter_name(k)}
    return state


def load_checkpoint(path: Path, model, ema, optimizer) -> dict:
    """Load a checkpoint into model / EMA / optimizer in place; return the trainer state."""
    with adam_state_for_loading(optimizer):
        template = build_state(model, ema, optimizer, {}, loading=True)
    template.pop("trainer")
    loaded = safe_load(template, path)
    _load_module(model, _strip(loaded, "model."), path)
    if ema is not None:
        _load_module(ema, _strip(loaded, "ema."), path, adapters_only=holds_only_adapters(ema))
    if optimizer is not None:
        with torch_adam_step_on_load(optimizer):
            optimizer.load_state_dict(loaded["optimizer"])
    return loaded.get("trainer", {})


def load_model_weights(path: Path, model, *, which: str = "model") -> None:
    """Load only the (EMA or raw) model weights of a checkpoint into ``model``.

    ``which="ema"`` of a LoRA run: an EMA that shares its base (:func:`holds_only_adapters`)
    loads its adapters alone; a whole adapted model (export) takes its base from the model
    slot (frozen, so the same as the EMA's) and its adapters from the EMA slot."""
    if which not in ("model", "ema"):
        raise ValueError(f"which={which!r}: choose 'model' or 'ema'")
    if which == "ema" and holds_only_adapters(model):
        loaded = safe_load(_ema_state(model), path)
        _load_module(model, _strip(loaded, "ema."), path, adapters_only=True)
        return
    template = model.sharded_state_dict(prefix=f"{which}.")
    if which == "ema" and any(is_adapter_name(n) for n, _ in model.named_parameters()):
        base = model.sharded_state_dict(prefix="model.")
        template = {k: v for k, v in template.items() if is_adapter_name(k)}
        template.update({k: v for k, v in base.items() if not is_adapter_name(k)})
        loaded = safe_load(template, path)
        state = {**_strip(loaded, "model."), **_strip(loaded, "ema.")}
        _load_module(model, state, path)
        return
    loaded = safe_load(template, path)
    _load_module(model, _strip(loaded, f"{which}."), path)


def _load_module(module, state: dict, path: Path, *, adapters_only: bool = False) -> None:
    # checkpoints name blocks by their global index; a pipeline stage holds them locally
    if getattr(module, "layer_offset", 0):
        local = {module.global_name(k): k for k in module.state_dict()}
        state = {local.get(k, k): v for k, v in state.items()}
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
    if adapters_only:  # the base is another module's (adapter_copy): not loaded here
        missing = [k for k in missing if is_adapter_name(k)]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {len(missing)} tensors, e.g. {missing[:3]}")


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
