"""Patches of Megatron-Core's torch_dist checkpoint I/O (module globals, restored or owned).

* :func:`filesystem_reader`: ``TorchDistLoadShardedStrategy.load`` picks its file reader through
  the module function ``strategies.torch._get_filesystem_reader``, with no argument or strategy
  hook to pass another; inside the context that function returns the caller's reader (mugv-dit's
  :class:`~mugv_dit.checkpoint.SafeMetadataReader`, which never unpickles anything but
  checkpoint metadata). The supported alternative, a ``sharded_strategy`` of our own, would
  copy the strategy's 40-line ``load`` with its private key-mapping helpers.
* :func:`own_write_results_queue`: Megatron's async filesystem writer passes results through
  ``strategies.filesystem_async._results_queue``, served by a spawned manager process it starts
  on the first save and never stops (a SIGKILLed trainer leaves it running). We start that
  manager ourselves (:func:`mugv_formats.lifecycle.start_manager`: it dies with the trainer,
  and its server does not re-import the program's ``__main__``, which cost the first save up
  to ~11 s where the main script imports Megatron at its top) and set the queue before
  Megatron would.

Megatron symbols touched: :data:`MEGATRON_SYMBOLS`. Tests: ``tests/test_megatron_patches.py``,
the planted-pickle tests (``tests/hostile/test_run_folder_code_execution.py``) and every
checkpoint save / resume test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from multiprocessing.managers import SyncManager

from megatron.core.dist_checkpointing.strategies import filesystem_async
from megatron.core.dist_checkpointing.strategies import torch as mcore_torch_strategy
from mugv_formats.lifecycle import start_manager

MEGATRON_SYMBOLS = (
    "megatron.core.dist_checkpointing.strategies.torch._get_filesystem_reader",
    "megatron.core.dist_checkpointing.strategies.filesystem_async._results_queue",
)

_MANAGERS: list[SyncManager] = []


@contextlib.contextmanager
def filesystem_reader(make_reader: Callable) -> Iterator[None]:
    """Inside: Megatron's torch_dist loading reads through ``make_reader(checkpoint_dir,
    cache_metadata=False)``."""
    old = mcore_torch_strategy._get_filesystem_reader
    mcore_torch_strategy._get_filesystem_reader = make_reader
    try:
        yield
    finally:
        mcore_torch_strategy._get_filesystem_reader = old


def own_write_results_queue() -> None:
    """Serve Megatron's torch_dist write-results queue from a manager process that dies with
    this one (started once; a no-op when the queue exists)."""
    if filesystem_async._results_queue is None:
        manager = start_manager()
        _MANAGERS.append(manager)  # the queue lives as long as its manager
        filesystem_async._results_queue = manager.Queue()
