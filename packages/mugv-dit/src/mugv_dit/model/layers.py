"""The MUG-DiT block, assembled Megatron-style from a spec of named submodule slots.

Block (per token, with adaLN-single modulation chosen by the token's noise level):
    x = x + gate_msa * SelfAttn(modLN(x; shift_msa, scale_msa))
    x = x + CrossAttn(LN_affine(x), text)                      (pre-LN, no gate)
    x = x + gate_mlp * MLP(modLN(x; shift_mlp, scale_mlp))
where the six modulation vectors are ``table[layer] + t_block(t_emb)``; tokens of clean
conditioning frames (and the start/end tokens) use the t=0 embedding instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torch.utils.checkpoint
from megatron.core.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    copy_to_tensor_model_parallel_region,
)
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_config import TransformerConfig
from mugv_kernels.attention import PackedText

from mugv_dit.model.attention import CrossAttention, SelfAttention, column_forward, row_forward
from mugv_dit.model.ops import (
    ModulatedInput,
    gated_residual,
    gated_residual_layer_norm,
    modulated_layer_norm,
    residual_modulated_input,
    residual_modulated_layer_norm,
)


class MLP(MegatronModule):
    """fc1 (column parallel) -> GELU(tanh) -> fc2 (row parallel)."""

    def __init__(self, config: TransformerConfig):
        super().__init__(config)
        self.fc1 = ColumnParallelLinear(
            config.hidden_size,
            config.ffn_hidden_size,
            config=config,
            init_method=config.init_method,
            bias=True,
        )
        self.fc2 = RowParallelLinear(
            config.ffn_hidden_size,
            config.hidden_size,
            config=config,
            init_method=config.output_layer_init_method,
            bias=True,
            input_is_parallel=True,
            skip_bias_add=False,
        )

    def forward(self, x_BNC: torch.Tensor | ModulatedInput) -> torch.Tensor:
        h = column_forward(self.fc1, x_BNC)
        return row_forward(self.fc2, F.gelu(h, approximate="tanh"))


@dataclass
class DiTLayerSubmodules:
    """Slots of a DiT block; a spec function fills them."""

    self_attention: ModuleSpec | type = SelfAttention
    cross_attention: ModuleSpec | type = CrossAttention
    mlp: ModuleSpec | type = MLP
    extra: dict = field(default_factory=dict)


class DiTLayer(MegatronModule):
    """One MUG-DiT block (see module docstring)."""

    def __init__(
        self,
        config: TransformerConfig,
        submodules: DiTLayerSubmodules,
        *,
        eps: float = 1e-6,
        attention_backend: str = "auto",
        fused_ops: bool = False,
        fused_ln_linear: str = "auto",
        ln_linear_method: str = "recompute",
        recompute_mlp: bool = False,
        cp_group: dist.ProcessGroup | None = None,
    ):
        super().__init__(config)
        self.recompute_mlp = recompute_mlp
        hidden = config.hidden_size
        self.eps = eps
        self.fused_ops = fused_ops
        self.fused_ln_linear = fused_ln_linear
        self.ln_linear_method = ln_linear_method
        attn_kw = {"eps": eps, "backend": attention_backend, "fused": fused_ops}
        self.self_attention = build_module(
            submodules.self_attention, config, **attn_kw, cp_group=cp_group
        )
        self.cross_attention = build_module(submodules.cross_attention, config, **attn_kw)
        self.mlp = build_module(submodules.mlp, config)
        self.cross_norm_weight = torch.nn.Parameter(torch.ones(hidden))
        self.cross_norm_bias = torch.nn.Parameter(torch.zeros(hidden))
        self.scale_shift_table = torch.nn.Parameter(torch.randn(6, hidden) / hidden**0.5)

    def forward(
        self,
        x_BNC: torch.Tensor,
        *,
        t_mod_B6C: torch.Tensor,
        t0_mod_B6C: torch.Tensor,
        noisy_BN1: torch.Tensor,
        text_LC: torch.Tensor,
        text: PackedText,
        cos_BNK: torch.Tensor,
        sin_BNK: torch.Tensor,
        n_real: int | None = None,
    ) -> torch.Tensor:
        """One block on ``x`` (``n_real``: see :meth:`SelfAttention.forward`)."""
        table = self.scale_shift_table.to(t_mod_B6C.dtype)
        # six per-branch vectors [B, 2, D]: branch 0 = t (noisy tokens), branch 1 = t=0
        mods_B62D = torch.stack([table[None] + t_mod_B6C, table[None] + t0_mod_B6C], dim=2)
        cross_w, cross_b = self.cross_norm_weight, self.cross_norm_bias
        if self.config.sequence_parallel:
            # used on this rank's token shard only: all-reduce their gradients over TP
            mods_B62D = copy_to_tensor_model_parallel_region(mods_B62D)
            cross_w = copy_to_tensor_model_parallel_region(cross_w)
            cross_b = copy_to_tensor_model_parallel_region(cross_b)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods_B62D.to(
            x_BNC.dtype
        ).unbind(1)
        clean_BN = ~noisy_BN1[..., 0]
        fused, eps = self.fused_ops, self.eps
        mode = self.fused_ln_linear
        fuse_ln = mode == "on" or (mode == "auto" and x_BNC.is_cuda and fused)
        if fuse_ln:  # the qkv linear applies the norm itself (mugv_kernels.ln_linear)
            h = ModulatedInput(
                x_BNC, shift_msa, scale_msa, clean_BN, eps, fused, method=self.ln_linear_method
            )
        else:
            h = modulated_layer_norm(x_BNC, shift_msa, scale_msa, clean_BN, eps, fused=fused)
        x_BNC, h = gated_residual_layer_norm(
            x_BNC,
            self.self_attention(h, cos_BNK, sin_BNK, n_real),
            gate_msa,
            clean_BN,
            cross_w,
            cross_b,
            eps,
            fused=fused,
        )
        cross_out = self.cross_attention(h, text_LC, text)
        if fuse_ln:  # fc1 normalises its input itself
            x_BNC, h = residual_modulated_input(
                x_BNC, cross_out, shift_mlp, scale_mlp, clean_BN, eps,
                fused=fused, method=self.ln_linear_method,
            )  # fmt: skip
        else:
            x_BNC, h = residual_modulated_layer_norm(
                x_BNC, cross_out, shift_mlp, scale_mlp, clean_BN, eps, fused=fused
            )
        if self.recompute_mlp and self.training and torch.is_grad_enabled():
            mlp_out = torch.utils.checkpoint.checkpoint(self.mlp, h, use_reentrant=False)
        else:
            mlp_out = self.mlp(h)
        return gated_residual(x_BNC, mlp_out, gate_mlp, clean_BN)


def get_dit_layer_spec() -> ModuleSpec:
    """Spec of the standard MUG-DiT block (SDPA/flash attention, torch or fused elementwise)."""
    return ModuleSpec(
        module=DiTLayer,
        submodules=DiTLayerSubmodules(
            self_attention=SelfAttention, cross_attention=CrossAttention, mlp=MLP
        ),
    )
