"""Patches: loading a ``fully_reshardable`` DistributedOptimizer checkpoint into torch Adam.

Megatron-Core 0.16's DistributedOptimizer, without Apex / transformer-engine, keeps torch's
Adam/AdamW as its inner optimizer; two of its loading paths assume Apex's fused Adam:

* :func:`adam_state_for_loading`: the loading template (``sharded_state_dict(is_loading=True)``)
  reads one global ``step`` from existing optimizer state, which a fresh torch Adam does not
  have yet; temporary zero state is added for the template and removed again (Megatron's
  ``load_state_dict`` wants none).
* :func:`torch_adam_step_on_load`: ``_set_main_param_and_optimizer_states`` copies the loaded
  tensors into torch Adam's per-parameter state, which has a ``step`` entry the loaded tensors
  lack (KeyError('step')); the instance's method is wrapped for the duration of the load.

Megatron symbols touched: :data:`MEGATRON_SYMBOLS`. Tests: ``tests/test_megatron_patches.py``
(both contexts on a real DistributedOptimizer) and every resume test of ``tests/test_train.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

MEGATRON_SYMBOLS = (
    "megatron.core.optimizer.distrib_optimizer.DistributedOptimizer.sharded_state_dict",
    "megatron.core.optimizer.distrib_optimizer.DistributedOptimizer.load_state_dict",
    "megatron.core.optimizer.distrib_optimizer.DistributedOptimizer._set_main_param_and_optimizer_states",
    "megatron.core.optimizer.distrib_optimizer.DistributedOptimizer.model_param_group_index_map",
)


@contextlib.contextmanager
def adam_state_for_loading(optimizer) -> Iterator[None]:
    """Give a fresh Megatron Adam optimizer temporary zero state while a loading template is
    built.

    Megatron-Core's DistributedOptimizer builds its loading sharded state dict from existing
    optimizer state (it reads one global 'step' from it), while its ``load_state_dict`` expects
    a fresh optimizer to have NO state yet (it allocates the state itself). So the temporary
    state (exp_avg, exp_avg_sq, step) lives only inside this context.
    """
    inner = getattr(optimizer, "optimizer", None)
    added = []
    if inner is not None:
        for group in inner.param_groups:
            for p in group["params"]:
                if not inner.state[p]:
                    inner.state[p] = {
                        "exp_avg": torch.zeros_like(p.data),
                        "exp_avg_sq": torch.zeros_like(p.data),
                        "step": torch.zeros((), dtype=torch.float32),
                    }
                    added.append(p)
    try:
        yield
    finally:
        for p in added:
            inner.state.pop(p, None)


@contextlib.contextmanager
def torch_adam_step_on_load(optimizer) -> Iterator[None]:
    """Let Megatron's DistributedOptimizer load 'fully_reshardable' state into torch Adam.

    Without Apex/TE, Megatron-Core 0.16 puts torch Adam's per-parameter 'step' into the state
    it copies loaded tensors into, but the loaded tensors carry no 'step' (it is restored
    globally), so ``_set_main_param_and_optimizer_states`` raises KeyError('step'). Inside
    this context the loaded tensors borrow the step already restored in the state.
    Megatron also hands every parameter the SAME step tensor, which torch Adam increments in
    place once per parameter; on exit each parameter gets its own copy.
    """
    subs = getattr(optimizer, "chained_optimizers", [optimizer])
    patched = []
    for sub in subs:
        orig = getattr(sub, "_set_main_param_and_optimizer_states", None)
        if orig is None:
            continue

        def fixed(model_param, tensors, _sub=sub, _orig=orig):
            if "step" not in tensors:
                group, order = _sub.model_param_group_index_map[model_param]
                main = _sub.optimizer.param_groups[group]["params"][order]
                state = _sub.optimizer.state.get(main, {})
                if "step" in state:
                    tensors = {**tensors, "step": state["step"]}
            return _orig(model_param, tensors)

        sub._set_main_param_and_optimizer_states = fixed
        patched.append(sub)
    try:
        yield
    finally:
        for sub in patched:
            del sub._set_main_param_and_optimizer_states
    for sub in subs:
        inner = getattr(sub, "optimizer", None)
        for state in getattr(inner, "state", {}).values():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].clone()
