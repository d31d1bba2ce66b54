"""Self- and cross-attention of MUG-DiT built from Megatron-Core tensor-parallel linears.

The kernels (SDPA / flash-attn 2 / FlashAttention-4, the ``auto`` policy, FA4's head-dim
padding for a correct backward) and :class:`PackedText` are :mod:`mugv_kernels.attention`'s,
shared with mugv-infer; training calls them with ``needs_backward=True``.

Shapes: B batch, N tokens (start + video + end), H local heads (heads / TP), D head dim,
L packed text tokens of the whole batch, K = D/2 RoPE pairs.

Fused projections are laid out per head (``[heads, (q, k, v), D]`` rows) so that a column
split over TP ranks hands each rank whole heads; the release's ``[(q, k, v), heads, D]``
layout is reordered on import (see ``mugv_dit.interop.original``).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    copy_to_tensor_model_parallel_region,
)
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import get_pg_size
from mugv_kernels.attention import PackedText, dense_attention, varlen_cross_attention
from mugv_kernels.dit_ops import rms_norm

from mugv_dit.lora.adapters import add_adapter, lora_of
from mugv_dit.model.context_parallel import heads_to_seq, seq_to_heads
from mugv_dit.model.ops import ModulatedInput, qk_rmsnorm_rope


def is_plain_linear(layer: ColumnParallelLinear | RowParallelLinear) -> bool:
    """True when a Megatron parallel linear has nothing to communicate or defer (one tensor
    parallel rank, no sequence parallelism, bias applied, no fused wgrad accumulation): then
    it is exactly ``F.linear``, and one call puts the bias into the GEMM's epilogue instead of
    a separate add over the whole output (Megatron's fallback adds it afterwards). Gradients
    are the same (weight / bias / input), so Megatron's DDP accumulates them as before."""
    plain = getattr(layer, "_mugv_plain_linear", None)
    if plain is None:
        plain = (
            get_pg_size(layer.tp_group) == 1
            and not layer.sequence_parallel
            and not layer.skip_bias_add
            and not layer.gradient_accumulation_fusion
            and not layer.config.defer_embedding_wgrad_compute
            and getattr(layer, "weight", None) is not None
        )
        layer._mugv_plain_linear = plain
    return plain


def column_forward(
    layer: ColumnParallelLinear, x_BNC: torch.Tensor | ModulatedInput
) -> torch.Tensor:
    """Column-parallel linear on ``[B, N, C]``. With sequence parallelism the input holds this
    rank's token shard ``[B, N/tp, C]`` and Megatron all-gathers it along its first dim, so
    the call goes through the ``[N, B, C]`` layout; the output covers all N tokens. A LoRA
    adapter on the layer (:mod:`mugv_dit.lora`) adds its update.

    A :class:`ModulatedInput` is normalised inside the GEMM when the layer is a plain linear
    without an enabled adapter, else materialised first."""
    if isinstance(x_BNC, ModulatedInput):
        st = lora_of(layer)
        if is_plain_linear(layer) and (st is None or not st.enabled):
            return x_BNC.linear(layer.weight, layer.bias)
        x_BNC = x_BNC.materialize()
    if is_plain_linear(layer):
        out = F.linear(x_BNC, layer.weight, layer.bias)
    elif layer.sequence_parallel:
        out, _ = layer(x_BNC.transpose(0, 1))
        out = out.transpose(0, 1)
    else:
        out, _ = layer(x_BNC)
    return add_adapter(layer, x_BNC, out)


def row_forward(layer: RowParallelLinear, y_BNC: torch.Tensor) -> torch.Tensor:
    """Row-parallel linear on ``[B, N, C/tp]``; with sequence parallelism Megatron
    reduce-scatters the output over tokens, giving this rank's shard ``[B, N/tp, C]``. A LoRA
    adapter on the layer adds its update."""
    if is_plain_linear(layer):
        out = F.linear(y_BNC, layer.weight, layer.bias)
    elif layer.sequence_parallel:
        out, _ = layer(y_BNC.transpose(0, 1).contiguous())
        out = out.transpose(0, 1)
    else:
        out, _ = layer(y_BNC)
    return add_adapter(layer, y_BNC, out)


class _AttentionBase(MegatronModule):
    def __init__(self, config: TransformerConfig, *, eps: float, backend: str, fused: bool):
        super().__init__(config)
        tp = config.tensor_model_parallel_size
        if config.num_attention_heads % tp:
            raise ValueError(
                f"num_heads={config.num_attention_heads} not divisible by tensor_parallel={tp}"
            )
        self.heads_local = config.num_attention_heads // tp
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.eps = eps
        self.backend = backend
        self.fused = fused
        self.q_norm_weight = torch.nn.Parameter(torch.ones(self.head_dim))
        self.k_norm_weight = torch.nn.Parameter(torch.ones(self.head_dim))

    def qk_norm_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """QK-norm weights, shared by all heads. Each TP rank only sees its own heads, so the
        weights pass through copy_to_tensor_model_parallel_region: identity forward,
        all-reduce of their gradient over the TP group in backward (replicas stay equal)."""
        return (
            copy_to_tensor_model_parallel_region(self.q_norm_weight),
            copy_to_tensor_model_parallel_region(self.k_norm_weight),
        )

    def _linear_col(self, out_features: int) -> ColumnParallelLinear:
        cfg = self.config
        return ColumnParallelLinear(
            cfg.hidden_size, out_features, config=cfg, init_method=cfg.init_method, bias=True
        )

    def _linear_row(self) -> RowParallelLinear:
        cfg = self.config
        return RowParallelLinear(
            cfg.hidden_size,
            cfg.hidden_size,
            config=cfg,
            init_method=cfg.output_layer_init_method,
            bias=True,
            input_is_parallel=True,
            skip_bias_add=False,
        )


class SelfAttention(_AttentionBase):
    """3D self-attention: fused qkv -> QK-RMSNorm -> 3D RoPE -> attention -> out proj.

    With context parallelism (``cp_group``: the context-parallel group, None without) the
    layer sees a token shard; q/k/v are exchanged all-to-all (heads scattered, sequence
    gathered) around the attention.
    """

    def __init__(
        self,
        config: TransformerConfig,
        *,
        eps: float,
        backend: str,
        fused: bool,
        cp_group: dist.ProcessGroup | None = None,
    ):
        super().__init__(config, eps=eps, backend=backend, fused=fused)
        self.qkv = self._linear_col(3 * config.hidden_size)
        self.proj = self._linear_row()
        self.cp_group = cp_group
        if cp_group is not None:
            cp = dist.get_world_size(cp_group)
            if self.heads_local % cp:
                raise ValueError(
                    f"num_heads={config.num_attention_heads} not divisible by "
                    f"tensor_parallel x context_parallel={config.num_attention_heads // self.heads_local * cp}"
                )

    def forward(self, x_BNC, cos_BNK, sin_BNK, n_real: int | None = None) -> torch.Tensor:
        """``x``: tokens (this rank's shard with sequence / context parallelism, padded).

        ``cos/sin``: RoPE tables. Without ``n_real`` they cover the real (unpadded) sequence
        and there is no context parallelism. With ``n_real`` (the real length of the whole
        sequence) they cover exactly the tokens of this rank's context-parallel shard
        (padding included), which the column-parallel projection returns.
        """
        qkv = column_forward(self.qkv, x_BNC)
        b, n_pad, _ = qkv.shape
        n_tab = cos_BNK.shape[1]
        if n_real is None:
            n_real = n_tab
        qkv_BNH3D = qkv[:, :n_tab].view(b, n_tab, self.heads_local, 3, self.head_dim)
        q, k, v = qkv_BNH3D.unbind(3)
        q_weight, k_weight = self.qk_norm_weights()
        q, k = qk_rmsnorm_rope(
            q,
            k,
            q_weight,
            k_weight,
            cos_BNK,
            sin_BNK,
            self.eps,
            fused=self.fused,
        )
        if self.cp_group is not None:
            # one exchange for q, k and v together: [3B, S, H, D] -> [3B, N, H/cp, D]
            q, k, v = seq_to_heads(torch.cat([q, k, v], dim=0), self.cp_group).chunk(3, dim=0)
        n_full = q.shape[1]
        q, k, v = q[:, :n_real], k[:, :n_real], v[:, :n_real]
        out_BNHD = dense_attention(q, k, v, self.backend, needs_backward=True)
        if n_full > n_real:  # padding tokens are never keys; their outputs are zero
            out_BNHD = torch.nn.functional.pad(out_BNHD, (0, 0, 0, 0, 0, n_full - n_real))
        if self.cp_group is not None:
            out_BNHD = heads_to_seq(out_BNHD, self.cp_group)
        out = out_BNHD.reshape(b, n_tab, -1)
        if n_pad > n_tab:  # padding tokens (sequence parallel) are never keys; zero outputs
            out = torch.nn.functional.pad(out, (0, 0, 0, n_pad - n_tab))
        return row_forward(self.proj, out)


class CrossAttention(_AttentionBase):
    """Video queries attend to packed variable-length text (QK-RMSNorm, no RoPE, no gate)."""

    def __init__(self, config: TransformerConfig, *, eps: float, backend: str, fused: bool):
        super().__init__(config, eps=eps, backend=backend, fused=fused)
        self.q = self._linear_col(config.hidden_size)
        # text tokens are replicated, never sequence-sharded
        text_config = dataclasses.replace(config, sequence_parallel=False)
        self.kv = ColumnParallelLinear(
            config.hidden_size,
            2 * config.hidden_size,
            config=text_config,
            init_method=config.init_method,
            bias=True,
        )
        self.proj = self._linear_row()

    def forward(self, x_BNC, text_LC: torch.Tensor, text: PackedText) -> torch.Tensor:
        q = column_forward(self.q, x_BNC)
        b, n, _ = q.shape
        q_weight, k_weight = self.qk_norm_weights()
        q_BNHD = rms_norm(q.view(b, n, self.heads_local, self.head_dim), q_weight, self.eps)
        kv = column_forward(self.kv, text_LC)
        k_LHD, v_LHD = kv.view(-1, self.heads_local, 2, self.head_dim).unbind(2)
        k_LHD = rms_norm(k_LHD, k_weight, self.eps)
        # each sample's video queries attend to its own packed text keys
        out_BNHD = varlen_cross_attention(
            q_BNHD, k_LHD, v_LHD.contiguous(), text, self.backend, needs_backward=True
        )
        return row_forward(self.proj, out_BNHD.reshape(b, n, -1))
