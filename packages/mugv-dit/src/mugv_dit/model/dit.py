"""MUG-DiT: the full model (embedders -> DiT blocks -> final layer).

Shapes: B batch, C latent channels, T/H/W latent grid, M = T'*H'*W' video tokens,
N = M + 2 (start and end tokens), L packed text tokens, D hidden width.
"""

from __future__ import annotations

import functools

import torch
import torch.utils.checkpoint
from megatron.core import parallel_state
from megatron.core.tensor_parallel import (
    gather_from_sequence_parallel_region,
    scatter_to_sequence_parallel_region,
)
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_config import TransformerConfig
from torch import nn

from mugv_dit.config import ModelConfig
from mugv_dit.model.attention import PackedText
from mugv_dit.model.embeddings import (
    FinalLayer,
    ScalarEmbedder,
    TextEmbedder,
    patchify,
    unpatchify,
)
from mugv_dit.model.layers import get_dit_layer_spec
from mugv_dit.model.rope import dit_rope_tables


def megatron_config(
    cfg: ModelConfig,
    *,
    tensor_parallel: int = 1,
    params_dtype: torch.dtype = torch.float32,
    cpu_init: bool = True,
    sequence_parallel: bool = False,
) -> TransformerConfig:
    """Megatron-Core TransformerConfig for a mugv ModelConfig (sequence parallelism only
    takes effect with tensor_parallel > 1)."""
    return TransformerConfig(
        sequence_parallel=sequence_parallel and tensor_parallel > 1,
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        ffn_hidden_size=cfg.ffn_size,
        num_attention_heads=cfg.num_heads,
        kv_channels=cfg.head_dim,
        tensor_model_parallel_size=tensor_parallel,
        params_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        use_cpu_initialization=cpu_init,
        init_method_std=cfg.init_std,
        layernorm_epsilon=cfg.norm_eps,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        gradient_accumulation_fusion=False,
    )


class MUGDiT(MegatronModule):
    """The MUG-DiT video diffusion transformer on Megatron-Core parallel layers."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        config: TransformerConfig,
        layer_spec: ModuleSpec | None = None,
    ):
        super().__init__(config)
        self.cfg = model_cfg
        d = model_cfg.hidden_size
        pt, ph, pw = model_cfg.patch_size
        spec = layer_spec or get_dit_layer_spec()
        self.x_embedder = nn.Linear(model_cfg.in_channels * pt * ph * pw, d)
        self.t_embedder = ScalarEmbedder(d, model_cfg.freq_embed_dim)
        self.fps_embedder = ScalarEmbedder(d, model_cfg.freq_embed_dim)
        self.t_block = nn.Linear(d, 6 * d)
        self.y_embedder = TextEmbedder(
            model_cfg.text_dim, d, model_cfg.null_text_tokens, model_cfg.norm_eps
        )
        self.start_token = nn.Parameter(torch.randn(d) * 0.02)
        self.end_token = nn.Parameter(torch.randn(d) * 0.02)
        self.blocks = nn.ModuleList(
            build_module(
                spec,
                config,
                eps=model_cfg.norm_eps,
                attention_backend=model_cfg.attention_backend,
                fused_ops=model_cfg.fused_ops,
                recompute_mlp=model_cfg.recompute == "selective",
            )
            for _ in range(model_cfg.num_layers)
        )
        self.final_layer = FinalLayer(d, pt * ph * pw, model_cfg.out_channels, model_cfg.norm_eps)
        with torch.no_grad():
            for lin in (self.x_embedder, self.t_block, self.final_layer.linear):
                nn.init.normal_(lin.weight, std=model_cfg.init_std)
                nn.init.zeros_(lin.bias)

    def _text_with_dropout(self, text: PackedText, drop_caption_B: torch.Tensor | None):
        if drop_caption_B is None or not bool(drop_caption_B.any()):
            return text
        null = self.y_embedder.null_caption.to(text.tokens_LC.dtype)
        items = [
            null if bool(drop) else tokens
            for tokens, drop in zip(text.split(), drop_caption_B.tolist())
        ]
        return PackedText.from_list(items)

    def forward(
        self,
        latents_BCTHW: torch.Tensor,
        sigma_B: torch.Tensor,
        text: PackedText,
        *,
        fps_B: torch.Tensor,
        noisy_frames_BT: torch.Tensor | None = None,
        frame_positions_BT: torch.Tensor | None = None,
        drop_caption_B: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict ``[B, out_channels, T, H, W]`` (float32, or float64 for a float64 model) from noisy latents.

        Args:
            latents_BCTHW: noisy latents (conditioning frames clean).
            sigma_B: noise level s in [0, 1] of the noisy frames.
            text: packed text features (``[L, text_dim]``) of the batch.
            fps_B: frames per second of each sample.
            noisy_frames_BT: True for frames that carry noise (use the t modulation), False
                for clean conditioning frames (t=0 modulation). Default: all noisy.
            frame_positions_BT: RoPE time positions of latent frames; default 0..T-1.
            drop_caption_B: samples whose caption is replaced by the learned null caption.
        """
        cfg = self.cfg
        b, _, t, h, w = latents_BCTHW.shape
        pt, ph, pw = cfg.patch_size
        grid = (t // pt, h // ph, w // pw)
        if len(text.cu_seqlens) != b + 1:
            raise ValueError(f"text has {len(text.cu_seqlens) - 1} samples, latents have {b}")
        dtype = self.x_embedder.weight.dtype
        device = latents_BCTHW.device
        if noisy_frames_BT is None:
            noisy_frames_BT = torch.ones(b, t, dtype=torch.bool, device=device)
        if frame_positions_BT is None:
            frame_positions_BT = torch.arange(t, device=device)[None].expand(b, t)

        t_emb = self.t_embedder(sigma_B * cfg.timestep_scale) + self.fps_embedder(fps_B)
        t0_emb = self.t_embedder(torch.zeros_like(sigma_B)) + self.fps_embedder(fps_B)
        t_mod_B6C = self.t_block(nn.functional.silu(t_emb)).unflatten(1, (6, -1))
        t0_mod_B6C = self.t_block(nn.functional.silu(t0_emb)).unflatten(1, (6, -1))

        text = self._text_with_dropout(text, drop_caption_B)
        text_LC = self.y_embedder(text.tokens_LC)
        if self.training and torch.is_grad_enabled():
            # keep the null caption in the graph even when no caption is dropped, so every
            # parameter gets a (zero) gradient and overlapped grad-reduce buckets complete
            text_LC = text_LC + 0.0 * self.y_embedder.null_caption.sum().to(text_LC.dtype)

        x_BMC = self.x_embedder(patchify(latents_BCTHW.to(dtype), cfg.patch_size))
        x_BNC = torch.cat(
            [self.start_token.expand(b, 1, -1), x_BMC, self.end_token.expand(b, 1, -1)], dim=1
        )
        tokens_per_frame = grid[1] * grid[2]
        noisy_tok_BM = noisy_frames_BT[:, ::pt].repeat_interleave(tokens_per_frame, dim=1)
        edge = torch.zeros(b, 1, dtype=torch.bool, device=device)
        noisy_BN1 = torch.cat([edge, noisy_tok_BM, edge], dim=1)[..., None]
        n_real = x_BNC.shape[1]
        noisy_full_BN1 = noisy_BN1
        if self.config.sequence_parallel:
            x_BNC, noisy_BN1 = self._shard_sequence(x_BNC, noisy_BN1)
        cos_BNK, sin_BNK = dit_rope_tables(
            grid,
            cfg.head_dim,
            frame_positions_BT[:, ::pt],
            theta=cfg.rope_theta,
            dtype=torch.promote_types(dtype, torch.float32),
        )
        cos_BNK, sin_BNK = cos_BNK.to(device), sin_BNK.to(device)

        recompute = self.training and cfg.recompute == "full" and torch.is_grad_enabled()
        for block in self.blocks:
            run = block
            if recompute:
                run = functools.partial(
                    torch.utils.checkpoint.checkpoint, block, use_reentrant=False
                )
            x_BNC = run(
                x_BNC,
                t_mod_B6C=t_mod_B6C,
                t0_mod_B6C=t0_mod_B6C,
                noisy_BN1=noisy_BN1,
                text_LC=text_LC,
                text=text,
                cos_BNK=cos_BNK,
                sin_BNK=sin_BNK,
            )
        if self.config.sequence_parallel:
            # the final layer is replicated: gather tokens; backward just splits the grad
            x_NBC = gather_from_sequence_parallel_region(
                x_BNC.transpose(0, 1).contiguous(), tensor_parallel_output_grad=False
            )
            x_BNC = x_NBC.transpose(0, 1)[:, :n_real]
        out_BMP = self.final_layer(x_BNC[:, 1:-1], t_emb, t0_emb, noisy_full_BN1[:, 1:-1])
        out = unpatchify(out_BMP, grid, cfg.patch_size, cfg.out_channels)
        return out.to(torch.promote_types(out.dtype, torch.float32))

    def _shard_sequence(self, x_BNC: torch.Tensor, noisy_BN1: torch.Tensor):
        """Pad tokens to a multiple of the TP size and keep this rank's contiguous shard
        (sequence parallelism). Padding tokens are never attention keys (see SelfAttention)."""
        tp = parallel_state.get_tensor_model_parallel_world_size()
        rank = parallel_state.get_tensor_model_parallel_rank()
        pad = (-x_BNC.shape[1]) % tp
        if pad:
            x_BNC = torch.nn.functional.pad(x_BNC, (0, 0, 0, pad))
            noisy_BN1 = torch.nn.functional.pad(noisy_BN1, (0, 0, 0, pad))
        x_NBC = scatter_to_sequence_parallel_region(x_BNC.transpose(0, 1).contiguous())
        shard = x_NBC.shape[0]
        return x_NBC.transpose(0, 1), noisy_BN1[:, rank * shard : (rank + 1) * shard]

    def sharded_state_dict(self, prefix: str = "", sharded_offsets=(), metadata=None):
        """Megatron sharded state dict with global (TP-independent) shapes.

        MegatronModule's default treats the ``blocks`` ModuleList as a plain (replicated)
        module; each block is re-emitted through its own sharded_state_dict so the
        tensor-parallel linears are saved with their TP axis.
        """
        state = super().sharded_state_dict(prefix, sharded_offsets, metadata)
        for i, block in enumerate(self.blocks):
            state.update(
                block.sharded_state_dict(f"{prefix}blocks.{i}.", sharded_offsets, metadata)
            )
        return state


def count_parameters(model: nn.Module) -> int:
    """Number of parameters held by this rank."""
    return sum(p.numel() for p in model.parameters())
