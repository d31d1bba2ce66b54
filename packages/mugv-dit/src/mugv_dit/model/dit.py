"""MUG-DiT: the full model (embedders -> DiT blocks -> final layer).

Shapes: B batch, C latent channels, T/H/W latent grid, M = T'*H'*W' video tokens,
N = M + 2 (start and end tokens), L packed text tokens, D hidden width, P = patch volume x
output channels. Token dims hold this rank's shard where the sequence is split: padded to a
multiple of CP (x TP with sequence parallelism), cut into CP shards, then SP shards (see
:class:`~mugv_dit.model.parallel_context.TokenLayout`).

The model reads its place in the parallel layout from the :class:`ParallelContext` it is
given, never from Megatron's globals.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.utils.checkpoint
from megatron.core.enums import ModelType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_config import TransformerConfig
from mugv_kernels.attention import PackedText
from mugv_kernels.dit_modules import ScalarEmbedder, TextEmbedder
from mugv_kernels.dit_ops import patchify, unpatchify
from mugv_kernels.rope import default_frame_index, dit_rope_tables
from torch import nn

from mugv_dit.config import ModelConfig, RuntimeConfig
from mugv_dit.model.embeddings import FinalLayer
from mugv_dit.model.layers import get_dit_layer_spec
from mugv_dit.model.parallel_context import ParallelContext, TokenLayout


def megatron_config(
    cfg: ModelConfig,
    *,
    tensor_parallel: int = 1,
    params_dtype: torch.dtype = torch.float32,
    cpu_init: bool = True,
    sequence_parallel: bool = False,
    pipeline_parallel: int = 1,
    context_parallel: int = 1,
) -> TransformerConfig:
    """Megatron-Core TransformerConfig for a mugv ModelConfig (sequence parallelism only
    takes effect with tensor_parallel > 1)."""
    config = TransformerConfig(
        sequence_parallel=sequence_parallel and tensor_parallel > 1,
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        ffn_hidden_size=cfg.ffn_size,
        num_attention_heads=cfg.num_heads,
        kv_channels=cfg.head_dim,
        tensor_model_parallel_size=tensor_parallel,
        pipeline_model_parallel_size=pipeline_parallel,
        context_parallel_size=context_parallel,
        pipeline_dtype=params_dtype if pipeline_parallel > 1 else None,
        params_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        use_cpu_initialization=cpu_init,
        init_method_std=cfg.init_std,
        layernorm_epsilon=cfg.norm_eps,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        gradient_accumulation_fusion=False,
    )
    # the conditioning embedders are replicated on every pipeline stage: Megatron's
    # finalize_model_grads all-reduces grads of parameters marked `pipeline_parallel`
    config.has_cond_embedder = pipeline_parallel > 1
    return config


# modules every pipeline stage holds (the conditioning of every block), by attribute name
CONDITIONING_MODULES = ("t_embedder", "fps_embedder", "t_block", "y_embedder")


class MUGDiT(MegatronModule):
    """The MUG-DiT video diffusion transformer on Megatron-Core parallel layers.

    Under pipeline parallelism an instance is one stage: it holds blocks
    ``[layer_offset, layer_offset + len(blocks))``; the first stage (``pre_process``) also the
    patch embedding and start/end tokens, the last (``post_process``) the final layer, and
    EVERY stage the conditioning embedders (timestep, fps, ``t_block``, text), whose grads
    Megatron all-reduces over the pipeline group. Non-first stages take their input tokens
    through :meth:`set_input_tensor`; non-last stages return ``[N_shard, B, D]`` tokens.
    ``parallel`` places the instance in the layout (default: one process); its sizes must be
    those of ``config``.
    """

    def __init__(
        self,
        model_cfg: ModelConfig,
        config: TransformerConfig,
        layer_spec: ModuleSpec | None = None,
        *,
        runtime: RuntimeConfig | None = None,
        parallel: ParallelContext | None = None,
        pre_process: bool | None = None,
        post_process: bool | None = None,
    ):
        super().__init__(config)
        self.cfg = model_cfg
        self.runtime = runtime = runtime or RuntimeConfig()
        d = model_cfg.hidden_size
        pt, ph, pw = model_cfg.patch_size
        spec = layer_spec or get_dit_layer_spec()
        self.parallel = parallel = parallel or ParallelContext.single()
        sizes = (parallel.tp_size, parallel.pp_size, parallel.cp_size)
        wanted = (
            config.tensor_model_parallel_size,
            config.pipeline_model_parallel_size,
            config.context_parallel_size,
        )
        if sizes != wanted:
            raise ValueError(
                f"parallel context has (TP, PP, CP)={sizes} but the TransformerConfig "
                f"{wanted}: pass parallel=mugv_dit.parallel.parallel_context()"
            )
        pp_rank, pp_size = parallel.pp_rank, parallel.pp_size
        if model_cfg.num_layers % pp_size:
            raise ValueError(
                f"model.num_layers={model_cfg.num_layers} not divisible by pipeline_parallel={pp_size}"
            )
        self.pp_rank, self.pp_size = pp_rank, pp_size
        self.pre_process = pp_rank == 0 if pre_process is None else pre_process
        self.post_process = pp_rank == pp_size - 1 if post_process is None else post_process
        n_local = model_cfg.num_layers // pp_size
        self.layer_offset = pp_rank * n_local
        self.share_embeddings_and_output_weights = False  # read by finalize_model_grads
        self.model_type = ModelType.encoder_or_decoder  # read by the pipeline schedules
        self.input_tensor = None
        # every part is initialised from its own seed drawn from the global RNG, so a stage
        # holds exactly the weights of the same part of an unsplit model (any TP/PP layout)
        base_seed = int(torch.randint(0, 2**62, (1,)).item())
        seeded = functools.partial(_seeded_init, base_seed)
        if self.pre_process:
            with seeded(0):
                self.x_embedder = nn.Linear(model_cfg.in_channels * pt * ph * pw, d)
                self.start_token = nn.Parameter(torch.randn(d) * 0.02)
                self.end_token = nn.Parameter(torch.randn(d) * 0.02)
                _normal_linear(self.x_embedder, model_cfg.init_std)
        with seeded(1):
            self.t_embedder = ScalarEmbedder(d, model_cfg.freq_embed_dim)
            self.fps_embedder = ScalarEmbedder(d, model_cfg.freq_embed_dim)
            self.t_block = nn.Linear(d, 6 * d)
            self.y_embedder = TextEmbedder(
                model_cfg.text_dim, d, model_cfg.null_text_tokens, model_cfg.norm_eps
            )
            _normal_linear(self.t_block, model_cfg.init_std)
        blocks = []
        for i in range(self.layer_offset, self.layer_offset + n_local):
            with seeded(100 + i):
                blocks.append(
                    build_module(
                        spec,
                        config,
                        eps=model_cfg.norm_eps,
                        attention_backend=runtime.attention_backend,
                        fused_ops=runtime.fused_ops,
                        fused_ln_linear=runtime.fused_ln_linear,
                        ln_linear_method=runtime.ln_linear_method,
                        recompute_mlp=runtime.recompute == "selective",
                        cp_group=parallel.cp_group,
                    )
                )
        self.blocks = nn.ModuleList(blocks)
        if self.post_process:
            with seeded(2):
                self.final_layer = FinalLayer(
                    d, pt * ph * pw, model_cfg.out_channels, model_cfg.norm_eps
                )
                _normal_linear(self.final_layer.linear, model_cfg.init_std)
        if pp_size > 1:
            for name in CONDITIONING_MODULES:
                for p in getattr(self, name).parameters():
                    p.pipeline_parallel = True  # grads all-reduced over the pipeline group
                    # counted once in the grad norm (Megatron skips params marked shared)
                    p.shared = pp_rank > 0

    def global_name(self, name: str) -> str:
        """Name of a parameter of this stage in the full (unsplit) model."""
        if self.layer_offset and name.startswith("blocks."):
            i, rest = name[len("blocks.") :].split(".", 1)
            return f"blocks.{int(i) + self.layer_offset}.{rest}"
        return name

    def set_input_tensor(self, input_tensor) -> None:
        """Input tokens ``[N_shard, B, D]`` of a non-first pipeline stage (Megatron's hook)."""
        if isinstance(input_tensor, list):
            input_tensor = input_tensor[0]
        self.input_tensor = input_tensor

    def token_layout(self, latent_shape: tuple[int, ...]) -> TokenLayout:
        """How the sequence (start + video + end tokens) of latents of this shape is laid out
        over the ranks."""
        _, _, t, h, w = latent_shape
        pt, ph, pw = self.cfg.patch_size
        n = (t // pt) * (h // ph) * (w // pw) + 2
        return TokenLayout.of(n, self.parallel, self.config.sequence_parallel)

    def padded_length(self, latent_shape: tuple[int, ...]) -> int:
        """Sequence length (start + video + end tokens) padded to a multiple of the ranks it is
        sharded over (context parallel x tensor parallel with sequence parallelism)."""
        return self.token_layout(latent_shape).n_padded

    def _rope_tables(self, grid, frame_index_BF, dtype, device):
        """RoPE ``cos, sin`` tables of the full sequence, kept on ``device`` for the last few
        (grid, frame index) seen: training repeats the same few shapes, and rebuilding them
        would cost host work and a host-to-device copy every step."""
        fi = frame_index_BF.detach().cpu()
        key = (grid, tuple(fi.flatten().tolist()), tuple(fi.shape), dtype, str(device))
        cache = self.__dict__.setdefault("_rope_cache", {})
        if key not in cache:
            cos, sin = dit_rope_tables(
                grid, self.cfg.head_dim, fi, theta=self.cfg.rope_theta, dtype=dtype
            )
            if len(cache) >= 8:
                cache.pop(next(iter(cache)))
            cache[key] = (cos.to(device), sin.to(device))
        return cache[key]

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
        frame_index_BF: torch.Tensor | None = None,
        drop_caption_B: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict ``[B, out_channels, T, H, W]`` (float32, or float64 for a float64 model) from noisy latents.

        Args:
            latents_BCTHW: noisy latents (conditioning frames clean). Non-first pipeline
                stages read only its shape (their tokens come from the previous stage).
            sigma_B: noise level s in [0, 1] of the noisy frames.
            text: packed text features (``[L, text_dim]``) of the batch.
            fps_B: frames per second of each sample.
            noisy_frames_BT: True for frames that carry noise (use the t modulation), False
                for clean conditioning frames (t=0 modulation). Default: all noisy.
            frame_index_BF: RoPE time index ``[B, T' + 2]`` of the start token, the ``T'``
                token frames (``T' = T / patch_t``) and the end token, as in the MUG-V
                release; default ``arange(T' + 2)``.
            drop_caption_B: samples whose caption is replaced by the learned null caption.

        Returns the prediction on the last pipeline stage, else this stage's output tokens.
        """
        cfg = self.cfg
        b, _, t, h, w = latents_BCTHW.shape
        pt, ph, pw = cfg.patch_size
        grid = (t // pt, h // ph, w // pw)
        if len(text.cu_seqlens) != b + 1:
            raise ValueError(f"text has {len(text.cu_seqlens) - 1} samples, latents have {b}")
        device = latents_BCTHW.device
        if noisy_frames_BT is None:
            noisy_frames_BT = torch.ones(b, t, dtype=torch.bool, device=device)
        if frame_index_BF is None:
            frame_index_BF = default_frame_index(b, grid[0])
        elif tuple(frame_index_BF.shape) != (b, grid[0] + 2):
            raise ValueError(
                f"frame_index_BF must have shape [B, T'+2] = [{b}, {grid[0] + 2}] "
                f"(start, {grid[0]} token frames, end), got {tuple(frame_index_BF.shape)}"
            )
        layout = self.token_layout(latents_BCTHW.shape)

        # conditioning: timestep (noisy frames) and t=0 (clean frames) modulation, text
        t_emb, t0_emb = self._time_embeddings(sigma_B, fps_B)
        t_mod_B6C = self.t_block(nn.functional.silu(t_emb)).unflatten(1, (6, -1))
        t0_mod_B6C = self.t_block(nn.functional.silu(t0_emb)).unflatten(1, (6, -1))
        text = self._text_with_dropout(text, drop_caption_B)
        text_LC = self._embed_text(text)

        # per-token noisy mask and RoPE tables of this rank's CP shard
        noisy_BN1 = layout.cp_shard(self._noisy_tokens(noisy_frames_BT, grid))
        dtype = self.t_block.weight.dtype
        cos_BNK, sin_BNK = self._rope_tables(
            grid, frame_index_BF, torch.promote_types(dtype, torch.float32), device
        )
        cos_BNK = layout.cp_shard(cos_BNK).contiguous()
        sin_BNK = layout.cp_shard(sin_BNK).contiguous()

        # tokens: [start, patches, end] on the first stage, the previous stage's elsewhere
        if self.pre_process:
            x_BNC = layout.scatter_sp(layout.cp_shard(self._embed_video(latents_BCTHW)))
        elif self.input_tensor is None:
            raise RuntimeError("pipeline stage without input tensor (set_input_tensor)")
        else:
            x_BNC = self.input_tensor.transpose(0, 1)

        noisy_local_BN1 = layout.sp_shard(noisy_BN1)  # the tokens this rank's blocks see
        recompute = self.training and self.runtime.recompute == "full" and torch.is_grad_enabled()
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
                noisy_BN1=noisy_local_BN1,
                text_LC=text_LC,
                text=text,
                cos_BNK=cos_BNK,
                sin_BNK=sin_BNK,
                n_real=layout.n_real,
            )
        if not self.post_process:
            return x_BNC.transpose(0, 1).contiguous()
        # per token on this rank's CP shard, then the whole sequence (start/end/padding cut)
        out_BNP = self.final_layer(layout.gather_sp(x_BNC), t_emb, t0_emb, noisy_BN1)
        out_BNP = layout.gather_cp(out_BNP)[:, 1 : layout.n_real - 1]
        out = unpatchify(out_BNP, grid, cfg.patch_size, cfg.out_channels)
        return out.to(torch.promote_types(out.dtype, torch.float32))

    def _time_embeddings(self, sigma_B, fps_B) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings ``[B, D]`` of the noise level and of t=0, each plus the fps embedding."""
        t_emb = self.t_embedder(sigma_B * self.cfg.timestep_scale) + self.fps_embedder(fps_B)
        t0_emb = self.t_embedder(torch.zeros_like(sigma_B)) + self.fps_embedder(fps_B)
        return t_emb, t0_emb

    def _embed_text(self, text: PackedText) -> torch.Tensor:
        text_LC = self.y_embedder(text.tokens_LC)
        if self.training and torch.is_grad_enabled():
            # keep the null caption in the graph even when no caption is dropped, so every
            # parameter gets a (zero) gradient and overlapped grad-reduce buckets complete
            text_LC = text_LC + 0.0 * self.y_embedder.null_caption.sum().to(text_LC.dtype)
        return text_LC

    def _noisy_tokens(self, noisy_frames_BT: torch.Tensor, grid) -> torch.Tensor:
        """``[B, N, 1]`` True for tokens of noisy frames (start/end tokens: False)."""
        b, pt = noisy_frames_BT.shape[0], self.cfg.patch_size[0]
        noisy_tok_BM = noisy_frames_BT[:, ::pt].repeat_interleave(grid[1] * grid[2], dim=1)
        edge = torch.zeros(b, 1, dtype=torch.bool, device=noisy_frames_BT.device)
        return torch.cat([edge, noisy_tok_BM, edge], dim=1)[..., None]

    def _embed_video(self, latents_BCTHW: torch.Tensor) -> torch.Tensor:
        """``[B, N, D]``: start token, embedded patches, end token."""
        b = latents_BCTHW.shape[0]
        x = patchify(latents_BCTHW.to(self.t_block.weight.dtype), self.cfg.patch_size)
        x_BMC = self.x_embedder(x)
        start, end = self.start_token.expand(b, 1, -1), self.end_token.expand(b, 1, -1)
        return torch.cat([start, x_BMC, end], dim=1)

    def sharded_state_dict(self, prefix: str = "", sharded_offsets=(), metadata=None):
        """Megatron sharded state dict with global (TP- and PP-independent) keys and shapes.

        MegatronModule's default treats the ``blocks`` ModuleList as a plain (replicated)
        module under local indices; each block is re-emitted through its own
        sharded_state_dict under its GLOBAL index so the tensor-parallel linears are saved
        with their TP axis and a pipeline stage writes its own layers. The conditioning
        embedders exist on every stage: only stage 0's copy is the main replica.
        """
        state = super().sharded_state_dict(prefix, sharded_offsets, metadata)
        state = {k: v for k, v in state.items() if not k.startswith(f"{prefix}blocks.")}
        for i, block in enumerate(self.blocks):
            state.update(
                block.sharded_state_dict(
                    f"{prefix}blocks.{i + self.layer_offset}.", sharded_offsets, metadata
                )
            )
        if self.pp_rank > 0:
            cond = tuple(f"{prefix}{name}." for name in CONDITIONING_MODULES)
            for key, value in state.items():
                if key.startswith(cond) and hasattr(value, "replica_id"):
                    value.replica_id = (self.pp_rank, *tuple(value.replica_id)[1:])
        return state


@contextlib.contextmanager
def _seeded_init(base_seed: int, part: int):
    """Run a part's initialisation from its own seed, leaving the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed((base_seed + 7919 * part) % (2**63 - 1))
        yield


def _normal_linear(lin: nn.Linear, std: float) -> None:
    with torch.no_grad():
        nn.init.normal_(lin.weight, std=std)
        nn.init.zeros_(lin.bias)
