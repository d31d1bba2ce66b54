"""Every place mugv-dit patches Megatron-Core (or torch for Megatron's sake), one module each.

Written against ``megatron-core`` 0.16.1 (``uv.lock``; ``pyproject.toml`` pins
``megatron-core>=0.16,<0.17``, :data:`MEGATRON_CORE_PIN`). Each module names the Megatron
symbols it touches in ``MEGATRON_SYMBOLS``; ``tests/test_megatron_patches.py`` checks that
every one of them still exists in the installed Megatron-Core and that the installed version
is the pinned one, so an upgrade fails there first, naming the symbol.

| module | patch | Megatron symbols | why no supported API | test |
| --- | --- | --- | --- | --- |
| ``cuda_on_cpu`` | :func:`cpu_megatron`: ``torch.cuda.current_device/synchronize/empty_cache/default_stream/current_stream/stream`` mocked and CUDA device requests sent to the CPU (a ``TorchFunctionMode``), inside a context, only without CUDA | DDP's ``_ParamAndGradBuffer``, ``DistributedDataParallel``, ``clip_grads.get_grad_norm_fp32``, ``DistributedOptimizer``, ``pipeline_parallel.p2p_communication`` | Megatron hard-codes CUDA devices and type names | ``test_cuda_on_cpu.py``, every CPU gloo test |
| ``adam_load`` | :func:`adam_state_for_loading`: temporary zero torch-Adam state while the loading template is built | ``DistributedOptimizer.sharded_state_dict`` / ``load_state_dict`` | the template reads a global ``step`` from state a fresh torch Adam lacks | ``test_megatron_patches.py``, resume tests |
| ``adam_load`` | :func:`torch_adam_step_on_load`: the instance's ``_set_main_param_and_optimizer_states`` wrapped during a load (loaded tensors borrow ``step``), per-param ``step`` copies after | ``DistributedOptimizer._set_main_param_and_optimizer_states``, ``.model_param_group_index_map`` | torch Adam's state has a ``step`` the loaded tensors lack (Apex's does not) | ``test_megatron_patches.py``, resume tests |
| ``checkpoint_io`` | :func:`filesystem_reader`: the torch_dist loader reads through our safe metadata reader | ``dist_checkpointing.strategies.torch._get_filesystem_reader`` | the strategy picks its reader by a module function; an own strategy would copy its ``load`` | ``test_megatron_patches.py``, hostile planted-pickle tests |
| ``checkpoint_io`` | :func:`own_write_results_queue`: the async writer's results queue served by a manager that dies with the trainer | ``dist_checkpointing.strategies.filesystem_async._results_queue`` | Megatron starts that manager itself and never stops it | ``test_megatron_patches.py``, checkpoint save tests |
| ``multi_tensor`` | :func:`install_foreach_multi_tensor_ops`: grad norm / grad scale through torch foreach ops (only over the slow local fallbacks) | ``clip_grads.l2_norm_impl``, ``clip_grads.multi_tensor_scale_impl``, ``optimizer.multi_tensor_scale_impl`` | the kernels are module globals chosen at import | ``test_optimizer_kernels.py``, ``test_megatron_patches.py`` |

Not patches (supported APIs): the sync-free optimizer step
(:class:`mugv_dit.optim.sync_free_step.SyncFreeStep`) wraps Megatron's optimizer and calls its
public methods and the torch Adam it holds; torch's fused AdamW is switched on through the param
groups' public ``fused`` flag (:mod:`mugv_dit.optim.fused_adam`).
"""

from __future__ import annotations

from mugv_dit.megatron_patches import adam_load, checkpoint_io, cuda_on_cpu, multi_tensor
from mugv_dit.megatron_patches.adam_load import adam_state_for_loading, torch_adam_step_on_load
from mugv_dit.megatron_patches.checkpoint_io import filesystem_reader, own_write_results_queue
from mugv_dit.megatron_patches.cuda_on_cpu import cpu_megatron
from mugv_dit.megatron_patches.multi_tensor import install_foreach_multi_tensor_ops

MEGATRON_CORE_PIN = ("0.16", "0.17")  # >= first, < second (pyproject.toml)
PATCH_MODULES = (adam_load, checkpoint_io, cuda_on_cpu, multi_tensor)

__all__ = [
    "MEGATRON_CORE_PIN",
    "PATCH_MODULES",
    "adam_state_for_loading",
    "cpu_megatron",
    "filesystem_reader",
    "install_foreach_multi_tensor_ops",
    "own_write_results_queue",
    "torch_adam_step_on_load",
]
