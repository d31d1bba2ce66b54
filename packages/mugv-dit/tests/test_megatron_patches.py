"""Every Megatron-Core patch of ``mugv_dit.megatron_patches``: the symbols it touches still
exist in the installed (pinned) Megatron-Core, the table lists every patch module, and each
patch does what it says on a real Megatron object and puts things back afterwards."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from pathlib import Path

import pytest
import torch
from mugv_dit import megatron_patches
from mugv_dit.megatron_patches import (
    adam_load,
    checkpoint_io,
    cpu_megatron,
    filesystem_reader,
    own_write_results_queue,
)


def _resolve(symbol: str):
    """Import the longest module prefix of ``symbol``, then walk the attributes."""
    parts = symbol.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(symbol)


def test_installed_megatron_core_is_the_pinned_one():
    low, high = megatron_patches.MEGATRON_CORE_PIN
    version = importlib.metadata.version("megatron-core")
    major_minor = tuple(int(v) for v in version.split(".")[:2])
    assert tuple(map(int, low.split("."))) <= major_minor < tuple(map(int, high.split(".")))
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert f'"megatron-core>={low},<{high}"' in pyproject


@pytest.mark.parametrize("module", megatron_patches.PATCH_MODULES, ids=lambda m: m.__name__)
def test_every_touched_megatron_symbol_exists(module):
    assert module.MEGATRON_SYMBOLS
    for symbol in module.MEGATRON_SYMBOLS:
        if symbol.endswith("model_param_group_index_map"):  # an instance attribute
            continue
        _resolve(symbol)  # raises naming the symbol after a Megatron upgrade


def test_the_table_lists_every_patch_module():
    package = Path(megatron_patches.__file__).parent
    modules = {p.stem for p in package.glob("*.py")} - {"__init__"}
    assert modules == {m.__name__.rsplit(".", 1)[1] for m in megatron_patches.PATCH_MODULES}
    for name in modules:
        assert f"| ``{name}`` |" in megatron_patches.__doc__


def test_filesystem_reader_is_used_inside_and_restored_after():
    from megatron.core.dist_checkpointing.strategies import torch as strategy

    original = strategy._get_filesystem_reader
    calls = []

    def reader(checkpoint_dir, cache_metadata=False):
        calls.append(checkpoint_dir)
        raise RuntimeError("ours")

    with filesystem_reader(reader), pytest.raises(RuntimeError, match="ours"):
        strategy.TorchDistLoadShardedStrategy().load_tensors_metadata(Path("/nowhere"))
    assert calls == [Path("/nowhere")]
    assert strategy._get_filesystem_reader is original


def test_write_results_queue_manager_dies_with_its_parent_hook():
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    saved = filesystem_async._results_queue
    filesystem_async._results_queue = None
    try:
        own_write_results_queue()
        queue = filesystem_async._results_queue
        assert queue is not None
        own_write_results_queue()  # a no-op once it exists
        assert filesystem_async._results_queue is queue
        manager = checkpoint_io._MANAGERS[-1]
        assert manager._process.is_alive() and manager._process.pid != os.getpid()
        queue.put(3)
        assert queue.get() == 3
    finally:
        filesystem_async._results_queue = saved


def _distributed_optimizer():
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from mugv_dit import build_model
    from mugv_dit.config import model_preset

    torch.manual_seed(0)
    model = build_model(model_preset("debug"), dtype=torch.float32)
    ddp = DistributedDataParallel(
        model.config,
        DistributedDataParallelConfig(grad_reduce_in_fp32=True, use_distributed_optimizer=True),
        model,
    )
    opt = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=1e-3, use_distributed_optimizer=True), [ddp]
    )
    return model, opt


def test_adam_load_patches_on_a_real_distributed_optimizer(megatron_single):
    """The loading template needs state a fresh torch Adam lacks (Megatron raises without the
    patch); the load copies tensors without 'step' into torch Adam's state (KeyError without
    the patch); afterwards nothing is left patched and every param owns its step."""
    with cpu_megatron():
        model, opt = _distributed_optimizer()
        sub = opt.chained_optimizers[0]
        adam = sub.optimizer
        model_sd = model.sharded_state_dict()
        kw = dict(is_loading=True, metadata={"distrib_optim_sharding_type": "fully_reshardable"})
        with pytest.raises(AssertionError):  # Megatron: one global step from the state
            opt.sharded_state_dict(model_sd, **kw)
        with adam_load.adam_state_for_loading(opt):
            template = opt.sharded_state_dict(model_sd, **kw)
            assert all(adam.state[p] for g in adam.param_groups for p in g["params"])
        assert not adam.state  # the temporary state is gone
        assert template

        # what a load does per parameter: its state already restored with a (shared) step
        step = torch.tensor(5.0)
        for g in adam.param_groups:
            for p in g["params"]:
                adam.state[p] = {
                    "exp_avg": torch.zeros_like(p),
                    "exp_avg_sq": torch.zeros_like(p),
                    "step": step,
                }
        model_param = next(iter(sub.model_param_group_index_map))
        group, order = sub.model_param_group_index_map[model_param]
        main = adam.param_groups[group]["params"][order]
        loaded = {
            "param": torch.full_like(main, 2.0),
            "exp_avg": torch.full_like(main, 0.5),
            "exp_avg_sq": torch.full_like(main, 0.25),
        }
        with torch.no_grad(), pytest.raises(KeyError, match="step"):
            sub._set_main_param_and_optimizer_states(model_param, loaded)
        with torch.no_grad(), adam_load.torch_adam_step_on_load(opt):
            sub._set_main_param_and_optimizer_states(model_param, loaded)
        assert "_set_main_param_and_optimizer_states" not in vars(sub)
        torch.testing.assert_close(adam.state[main]["exp_avg"], loaded["exp_avg"])
        torch.testing.assert_close(main.detach(), loaded["param"])
        steps = [adam.state[p]["step"] for g in adam.param_groups for p in g["params"]]
        assert all(float(s) == 5.0 for s in steps)
        assert len({id(s) for s in steps}) == len(steps)  # each param its own step tensor
