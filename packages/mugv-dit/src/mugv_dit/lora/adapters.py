"""LoRA adapters on Megatron's tensor-parallel linears of the DiT blocks.

An adapted linear computes ``W x + B (s A drop(x))`` with ``s = alpha / r``; its adapter
parameters sit on the linear itself as ``lora_A`` ``[r, in]`` and ``lora_B`` ``[out, r]``
(so a parameter is named ``blocks.3.mlp.fc1.lora_A``, peft's ``...fc1.lora_A.weight``), split
over the tensor-parallel (TP) ranks like their linear:

* column-parallel ``W`` ``[out/tp, in]``: ``A`` replicated, ``B`` sharded on the output
  ``[out/tp, r]``. ``h = A x`` is computed on every rank; its gradient is summed over TP
  (each rank's ``B`` shard gives a part). With sequence parallelism (SP) each rank holds a
  token shard: ``h`` is all-gathered over the tokens (backward: reduce-scatter) and ``A``'s
  gradient, a sum over the token shards, is all-reduced over TP.
* row-parallel ``W`` ``[out, in/tp]``: ``A`` sharded on the input ``[r, in/tp]``, ``B``
  replicated. ``h = A_shard x_shard`` is a partial sum: all-reduced over TP (with SP
  reduce-scattered to the rank's token shard, and ``B``'s gradient all-reduced over TP).

Only ``r``-wide tensors travel; no ``x``-wide collective is added. ``B`` starts at zero, so
an adapted model equals its base until the first update; ``A`` is drawn whole (Kaiming
uniform, peft's default) from ``lora.seed`` and the layer's global name, then split, so every
TP layout starts from the same adapters. :func:`apply_lora` freezes every base parameter.

The forward is called from :func:`mugv_dit.model.attention.column_forward` /
``row_forward`` (the blocks' one way to run a parallel linear) when the layer carries an
adapter; :func:`adapters_enabled` switches all adapters of a model off and on (the DPO / KTO
reference is the base: the same model with its adapters off).

The adapter GEMMs run in the activations' dtype (the compute dtype, bf16 on GPU) whatever
the adapter parameters' dtype (``lora.dtype``): fp32 adapters keep fp32 weights and gradients
(as autocast does), but no fp32 copy of an activation is made and no fp32 GEMM runs over the
tokens; the scale multiplies the r-wide ``h``, not the output, and ``out + h B^T`` is one
GEMM (``addmm``: the add in its epilogue) where the base output is contiguous. An adapter
switched off (:func:`adapters_enabled`) runs nothing.

Shapes: B batch, N tokens (this rank's shard with SP), C channels, R the rank.
"""

from __future__ import annotations

import contextlib
import copy
import math
import types
import zlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
    reduce_from_tensor_model_parallel_region,
    reduce_scatter_to_sequence_parallel_region,
)
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint
from megatron.core.utils import get_pg_rank, get_pg_size
from torch import nn

from mugv_dit.lora.config import LoraConfig

# the adapters' names and flag live in mugv_dit.lora.names (no Megatron), re-exported here
from mugv_dit.lora.names import ADAPTER_COPY_ATTR as _ADAPTER_COPY
from mugv_dit.lora.names import ADAPTER_SUFFIXES as ADAPTER_SUFFIXES
from mugv_dit.lora.names import holds_only_adapters as holds_only_adapters
from mugv_dit.lora.names import is_adapter_name


@dataclass
class LoraState:
    """What an adapted linear knows about its adapter (``layer._mugv_lora``)."""

    column: bool  # column-parallel (else row-parallel)
    scale: float
    dropout: float
    sequence_parallel: bool
    tp_group: object
    enabled: bool = True


def lora_of(layer) -> LoraState | None:
    """The adapter state of a parallel linear (None when it has no adapter)."""
    return getattr(layer, "_mugv_lora", None)


def _compute_weights(layer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``A`` and ``B`` in the dtype of the activations ``x`` (the compute dtype): fp32
    adapters under a bf16 base run bf16 GEMMs (as under autocast) and keep fp32 parameters
    and gradients; the casts are r-wide, no activation-sized copy is made."""
    a, b = layer.lora_A, layer.lora_B
    return a.to(x.dtype), b.to(x.dtype)


def _col_adapter(layer, st: LoraState, x_BNC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = F.dropout(x_BNC, st.dropout, layer.training) if st.dropout else x_BNC
    a, b = _compute_weights(layer, x)
    tp = get_pg_size(st.tp_group)
    if st.sequence_parallel and tp > 1:
        a = copy_to_tensor_model_parallel_region(a, group=st.tp_group)  # sum over token shards
        h_NBR = F.linear(x, a).transpose(0, 1).contiguous()
        h_NBR = gather_from_sequence_parallel_region(
            h_NBR, tensor_parallel_output_grad=True, group=st.tp_group
        )
        h = h_NBR.transpose(0, 1)
    else:
        h = F.linear(x, a)
        if tp > 1:  # each rank's B shard gives part of dL/dh
            h = copy_to_tensor_model_parallel_region(h, group=st.tp_group)
    return h * st.scale, b  # the scale on the r-wide h, not the output


def _row_adapter(layer, st: LoraState, y_BNC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = F.dropout(y_BNC, st.dropout, layer.training) if st.dropout else y_BNC
    a, b = _compute_weights(layer, y)
    h = F.linear(y, a)  # partial sum over this rank's input features
    if get_pg_size(st.tp_group) > 1:
        if st.sequence_parallel:
            h_NBR = reduce_scatter_to_sequence_parallel_region(
                h.transpose(0, 1).contiguous(), group=st.tp_group
            )
            h = h_NBR.transpose(0, 1)
            b = copy_to_tensor_model_parallel_region(b, group=st.tp_group)
        else:
            h = reduce_from_tensor_model_parallel_region(h, group=st.tp_group)
    return h * st.scale, b


def add_adapter(layer, x_BNC: torch.Tensor, out_BNC: torch.Tensor) -> torch.Tensor:
    """``out`` (the linear's output on input ``x``, in the ``[B, N, C]`` layout of
    ``column_forward`` / ``row_forward``) plus the layer's adapter, if it has an enabled one."""
    st = lora_of(layer)
    if st is None or not st.enabled:
        return out_BNC
    h, b = (_col_adapter if st.column else _row_adapter)(layer, st, x_BNC)
    h, b = h.to(out_BNC.dtype), b.to(out_BNC.dtype)  # no-op casts: the compute dtype
    if out_BNC.is_contiguous():  # out + h B^T in one GEMM (the add in its epilogue)
        c = out_BNC.shape[-1]
        fused = torch.addmm(out_BNC.reshape(-1, c), h.reshape(-1, h.shape[-1]), b.t())
        return fused.view(out_BNC.shape)
    return out_BNC + F.linear(h, b)


def _sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
    """The linear's own sharded state dict plus its adapter with its TP axis (bound to an
    adapted layer by :func:`apply_lora`)."""
    st = lora_of(self)
    axes = {"weight": 0, "bias": 0, "lora_B": 0} if st.column else {"weight": 1, "lora_A": 1}
    return make_sharded_tensors_for_checkpoint(
        self.state_dict(prefix="", keep_vars=True),
        prefix,
        axes,
        sharded_offsets,
        tp_group=self.tp_group,
        dp_cp_group=(metadata or {}).get("dp_cp_group"),
    )


def _draw_a(global_name: str, rank: int, in_features: int, seed: int) -> torch.Tensor:
    """peft's default A: Kaiming-uniform (a = sqrt(5)) of the whole ``[r, in]`` matrix, from
    a generator seeded by ``seed`` and the layer's global name (TP-independent)."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(global_name.encode())) % 2**63)
    bound = 1.0 / math.sqrt(in_features)  # kaiming_uniform_ with a=sqrt(5) on fan_in
    return (torch.rand(rank, in_features, generator=g, dtype=torch.float64) * 2 - 1) * bound


def lora_dtype(cfg: LoraConfig, compute_dtype: torch.dtype) -> torch.dtype:
    """The adapters' parameter dtype: ``cfg.dtype``, ``model`` meaning ``compute_dtype``."""
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(cfg.dtype, compute_dtype)


def adapted_linears(model: nn.Module, cfg: LoraConfig) -> list[tuple[str, nn.Module]]:
    """``(global name, layer)`` of every block linear ``cfg.targets`` selects."""
    global_name = getattr(model, "global_name", lambda n: n)
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, ColumnParallelLinear | RowParallelLinear):
            continue
        parts = name.split(".")
        if len(parts) < 4 or parts[0] != "blocks":
            continue
        if cfg.targets_linear(".".join(parts[2:])):
            out.append((global_name(name + ".weight")[: -len(".weight")], module))
    return out


def apply_lora(model: nn.Module, cfg: LoraConfig, *, dtype: torch.dtype | None = None) -> list[str]:
    """Freeze ``model`` (a MUGDiT, any TP / PP / CP layout) and add ``cfg``'s adapters to
    the block linears it targets (adapter dtype: ``dtype``, default the linear's). Returns
    the global names of the adapted linears."""
    if cfg.dropout and any(get_pg_size(m.tp_group) > 1 for _, m in adapted_linears(model, cfg)):
        raise ValueError(
            f"lora.dropout={cfg.dropout} with tensor_parallel > 1: the adapter input is "
            "replicated over the TP ranks and their dropout masks would differ; set 0"
        )
    model.requires_grad_(False)
    names = []
    for name, layer in adapted_linears(model, cfg):
        if lora_of(layer) is not None:
            raise ValueError(f"{name} already has a LoRA adapter")
        column = isinstance(layer, ColumnParallelLinear)
        w = layer.weight
        pdtype = dtype or w.dtype
        tp, tp_rank = get_pg_size(layer.tp_group), get_pg_rank(layer.tp_group)
        in_full = w.shape[1] * (1 if column else tp)
        a_full = _draw_a(name, cfg.rank, in_full, cfg.seed)
        a = a_full if column else a_full.chunk(tp, dim=1)[tp_rank]
        out_local = w.shape[0]
        layer.lora_A = nn.Parameter(a.to(device=w.device, dtype=pdtype).contiguous())
        layer.lora_B = nn.Parameter(torch.zeros(out_local, cfg.rank, device=w.device, dtype=pdtype))
        if column:
            set_tensor_model_parallel_attributes(layer.lora_B, True, 0, 1)
        else:
            set_tensor_model_parallel_attributes(layer.lora_A, True, 1, 1)
        layer._mugv_lora = LoraState(
            column=column,
            scale=cfg.scale,
            dropout=cfg.dropout,
            sequence_parallel=bool(layer.sequence_parallel),
            tp_group=layer.tp_group,
        )
        layer.sharded_state_dict = types.MethodType(_sharded_state_dict, layer)
        names.append(name)
    if not names:
        raise ValueError(f"lora.targets={cfg.targets} adapt no linear of this model")
    return names


def lora_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The adapter parameters of ``model`` by (local) name."""
    return {n: p for n, p in model.named_parameters() if is_adapter_name(n)}


def has_lora(model: nn.Module) -> bool:
    return any(lora_of(m) is not None for m in model.modules())


@contextlib.contextmanager
def adapters_enabled(model: nn.Module, enabled: bool):
    """Within the block every adapter of ``model`` is on (``enabled``) or off (the base
    model: the exact computation of the model without adapters)."""
    states = [st for m in model.modules() if (st := lora_of(m)) is not None]
    before = [st.enabled for st in states]
    for st in states:
        st.enabled = enabled
    try:
        yield
    finally:
        for st, was in zip(states, before, strict=True):
            st.enabled = was


def _shared_object(value) -> bool:
    """Attributes a copy of a model must share, not copy: process groups, Megatron's
    configs and process-group collections."""
    module = type(value).__module__ or ""
    return isinstance(value, dist.ProcessGroup) or module.startswith(
        ("megatron.", "torch.distributed")
    )


def adapter_copy(model: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A copy of the adapted ``model`` that owns only its adapters: every other parameter
    and buffer IS the model's (the same tensor, not a copy), as are its process groups and
    Megatron config; the adapters are fresh ``dtype`` copies (no grad) with their
    tensor-parallel attributes. The EMA of a LoRA run: the base is frozen, so its average is
    the base itself, and the EMA costs the adapters' memory only (no second base)."""
    memo: dict[int, object] = {}
    for name, p in model.named_parameters():
        if is_adapter_name(name):
            fresh = nn.Parameter(p.detach().to(dtype).clone(), requires_grad=False)
            for attr in ("tensor_model_parallel", "partition_dim", "partition_stride"):
                if hasattr(p, attr):
                    setattr(fresh, attr, getattr(p, attr))
            memo[id(p)] = fresh
        else:
            if p.requires_grad:
                raise ValueError(f"adapter_copy: base parameter {name} is not frozen")
            memo[id(p)] = p
    for b in model.buffers():
        memo[id(b)] = b
    for module in model.modules():
        for value in vars(module).values():
            if _shared_object(value):
                memo[id(value)] = value
        st = lora_of(module)
        if st is not None and _shared_object(st.tp_group):
            memo[id(st.tp_group)] = st.tp_group
    out = copy.deepcopy(model, memo)
    setattr(out, _ADAPTER_COPY, True)
    return out
