"""MUG-DiT in plain PyTorch for inference (diffusers ``ModelMixin`` + ``ConfigMixin``).

The same model as mugv-dit's Megatron MUGDiT, under the same parameter names, so a
``mugv.dit-export`` folder loads by name (:meth:`MUGDiTTransformer3DModel.from_export`);
``save_pretrained`` / ``from_pretrained`` round-trip through diffusers' own format.

Block (adaLN-single; tokens of clean conditioning frames and the start/end tokens take the
t=0 modulation, the others the t modulation):
    x = x + gate_msa * SelfAttn(LN(x) * (1 + scale_msa) + shift_msa)   QK-RMSNorm, 3D RoPE
    x = x + CrossAttn(LN_affine(x), text)                              QK-RMSNorm, no gate
    x = x + gate_mlp * MLP(LN(x) * (1 + scale_mlp) + shift_mlp)        GELU (tanh)

Legend: B batch, C channels, T/H/W latent grid, M video tokens, N = M + 2 tokens (start,
video, end), L text tokens (padded), D hidden, Dh head dim, K = Dh/2 RoPE pairs,
P = patch volume x output channels. With sequence parallelism (``self.sequence_parallel``,
set by :mod:`mugv_infer.parallel`) the token dim of the blocks holds this rank's shard.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import mugv_formats as mf
import mugv_kernels as mk
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from mugv_formats.weights import check_state_dict_fits
from mugv_kernels.attention import (
    BACKENDS,
    AttentionBackendError,
    PackedText,
    dense_attention,
    masked_cross_attention,
    resolve_backend,
)
from mugv_kernels.dit_modules import ScalarEmbedder, TextEmbedder
from mugv_kernels.dit_ops import (
    acc_dtype,
    layer_norm,
    patchify,
    rms_norm,
    unpatchify,
)
from mugv_kernels.rope import (
    MAX_FRAME_INDEX,
    apply_rope_interleaved,
    default_frame_index,
    dit_rope_tables,
)
from torch import nn

from mugv_infer import __version__

EXPORT_ARCHITECTURE = "MUGDiT"
# mugv-dit ModelConfig fields that describe training / runtime, not weights
_EXPORT_RUNTIME_FIELDS = ("init_std", "attention_backend", "recompute", "fused_ops")


PAD_HEAD_DIM_AUTO = {72: 80}
"""``attention_pad_head_dim: auto``: the head dims whose FA4 SM90 forward runs faster zero-padded
(72 -> 80: 2.13 instead of 2.48 ms per layer at 12,880 tokens, H100 2026-12-07)."""


def padded_head_dim(setting: int | str, head_dim: int) -> int:
    """The head dim the self-attention kernel runs at under ``runtime.attention_pad_head_dim``:
    ``auto`` -> :data:`PAD_HEAD_DIM_AUTO` (else ``head_dim``), ``0`` -> ``head_dim``, ``N`` ->
    ``max(N, head_dim)``."""
    if setting == "auto":
        return PAD_HEAD_DIM_AUTO.get(head_dim, head_dim)
    if not isinstance(setting, int) or isinstance(setting, bool) or setting < 0:
        raise ValueError(f"attention_pad_head_dim must be 'auto' or an int >= 0, got {setting!r}")
    return max(setting, head_dim)


@torch.compiler.disable
def _kernel_head_dim(backend: str, q_BNHD: torch.Tensor, width: int) -> int:
    """``width`` where the dense attention runs on FA4 (the kernel whose speed depends on the
    head dim), else the true head dim: SDPA / cuDNN pads inside at no gain."""
    if width <= q_BNHD.shape[-1]:
        return q_BNHD.shape[-1]
    fa4 = resolve_backend(backend, q_BNHD, path="dense", needs_backward=False) == "fa4"
    return width if fa4 else q_BNHD.shape[-1]


class SelfAttention(nn.Module):
    """Fused qkv (laid out ``[heads, (q, k, v), Dh]``) -> QK-RMSNorm -> 3D RoPE -> attention.

    With ``pad_head_dim = P > Dh`` and FA4 running the attention, q, k and v are zero-padded to
    P (FA4's forward is faster at 80 than at 72) and q is scaled by ``sqrt(P / Dh)`` inside the
    QK-norm weight, in float32 before its one rounding, so FA4's ``1/sqrt(P)`` softmax scale
    gives the model's ``1/sqrt(Dh)``; zero channels add nothing to q.k and the output's extra
    channels (from zero v channels) are dropped.
    """

    def __init__(self, hidden: int, heads: int, eps: float):
        super().__init__()
        self.heads, self.head_dim, self.eps = heads, hidden // heads, eps
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.q_norm_weight = nn.Parameter(torch.ones(self.head_dim))
        self.k_norm_weight = nn.Parameter(torch.ones(self.head_dim))
        self.backend = "auto"
        self.pad_head_dim = padded_head_dim("auto", self.head_dim)  # runtime: set_attention_pad_head_dim
        self.sequence_parallel = None  # set by mugv_infer.parallel.apply_sequence_parallel

    def forward(self, x_BNC, cos_BNK, sin_BNK, n_real: int, fused: bool = False) -> torch.Tensor:
        b, n, _ = x_BNC.shape
        q, k, v = self.qkv(x_BNC).view(b, n, self.heads, 3, self.head_dim).unbind(3)
        width = self.head_dim
        if self.sequence_parallel is None and self.pad_head_dim > self.head_dim:
            width = _kernel_head_dim(self.backend, q, self.pad_head_dim)
        q_weight = self.q_norm_weight
        if width != self.head_dim:  # exact softmax scale at the padded width (see the class)
            acc = torch.promote_types(q_weight.dtype, torch.float32)
            q_weight = q_weight.to(acc) * (width / self.head_dim) ** 0.5
        if fused:  # mugv-kernels: RMSNorm + RoPE in one pass (PyTorch reference off-GPU)
            q, k = mk.qk_rmsnorm_rope3d(
                q, k, q_weight, self.k_norm_weight, cos_BNK, sin_BNK, eps=self.eps
            )
        else:
            q = apply_rope_interleaved(rms_norm(q, q_weight, self.eps), cos_BNK, sin_BNK)
            k = apply_rope_interleaved(rms_norm(k, self.k_norm_weight, self.eps), cos_BNK, sin_BNK)
        if self.sequence_parallel is not None:
            out = self.sequence_parallel.attention(q, k, v.contiguous(), n_real, self.backend)
        elif width != self.head_dim:
            pad = (0, width - self.head_dim)
            q, k, v = F.pad(q, pad), F.pad(k, pad), F.pad(v, pad)
            out = dense_attention(q, k, v, self.backend, needs_backward=False)[..., : self.head_dim]
        else:
            out = dense_attention(q, k, v.contiguous(), self.backend, needs_backward=False)
        return self.proj(out.reshape(b, n, -1))


class CrossAttention(nn.Module):
    """Video queries attend to the sample's (masked) text; QK-RMSNorm, no RoPE."""

    def __init__(self, hidden: int, heads: int, eps: float):
        super().__init__()
        self.heads, self.head_dim, self.eps = heads, hidden // heads, eps
        self.q = nn.Linear(hidden, hidden)
        self.kv = nn.Linear(hidden, 2 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.q_norm_weight = nn.Parameter(torch.ones(self.head_dim))
        self.k_norm_weight = nn.Parameter(torch.ones(self.head_dim))
        self.backend = "auto"

    def forward(self, x_BNC, text_BLC, mask_BL, text_pack: PackedText | None = None):
        b, n, _ = x_BNC.shape
        q = rms_norm(
            self.q(x_BNC).view(b, n, self.heads, self.head_dim), self.q_norm_weight, self.eps
        )
        k, v = self.kv(text_BLC).view(b, text_BLC.shape[1], self.heads, 2, self.head_dim).unbind(3)
        k = rms_norm(k, self.k_norm_weight, self.eps)
        out = masked_cross_attention(
            q, k, v.contiguous(), mask_BL, self.backend, text_pack, needs_backward=False
        )
        return self.proj(out.reshape(b, n, -1))


class MLP(nn.Module):
    def __init__(self, hidden: int, ffn: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden, ffn)
        self.fc2 = nn.Linear(ffn, hidden)

    def forward(self, x_BNC: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x_BNC), approximate="tanh"))


def _per_token(value_B2C: torch.Tensor, clean_BN1: torch.Tensor) -> torch.Tensor:
    """Branch 0 (t) for noisy tokens, branch 1 (t=0) for clean ones -> ``[B, N, C]``."""
    return torch.where(clean_BN1, value_B2C[:, 1:2], value_B2C[:, 0:1])


class MUGDiTBlock(nn.Module):
    """One MUG-DiT block (see the module docstring)."""

    def __init__(self, hidden: int, heads: int, ffn: int, eps: float):
        super().__init__()
        self.eps = eps
        self.self_attention = SelfAttention(hidden, heads, eps)
        self.cross_attention = CrossAttention(hidden, heads, eps)
        self.mlp = MLP(hidden, ffn)
        self.cross_norm_weight = nn.Parameter(torch.ones(hidden))
        self.cross_norm_bias = nn.Parameter(torch.zeros(hidden))
        self.scale_shift_table = nn.Parameter(torch.zeros(6, hidden))
        self.fused_ops = False  # runtime switch: mugv-kernels fused norms (set_fused_ops)

    def forward(
        self, x_BNC, mods_B26C, clean_BN1, text_BLC, mask_BL, cos_BNK, sin_BNK, n_real,
        text_pack: PackedText | None = None,
    ):  # fmt: skip
        """``text_pack``: the valid text keys packed (FA4 cross-attention), else None."""
        mods = (self.scale_shift_table.to(mods_B26C.dtype) + mods_B26C).to(x_BNC.dtype)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods.unbind(2)
        eps = self.eps
        text = (text_BLC, mask_BL, text_pack)
        if self.fused_ops:
            return self._fused_forward(
                x_BNC, mods.unbind(2), clean_BN1, text, cos_BNK, sin_BNK, n_real
            )
        h = layer_norm(x_BNC, eps) * (1 + _per_token(scale_msa, clean_BN1))
        h = h + _per_token(shift_msa, clean_BN1)
        attn = self.self_attention(h, cos_BNK, sin_BNK, n_real)
        x_BNC = x_BNC + _per_token(gate_msa, clean_BN1) * attn
        h = layer_norm(x_BNC, eps, self.cross_norm_weight, self.cross_norm_bias)
        x_BNC = x_BNC + self.cross_attention(h, *text)
        h = layer_norm(x_BNC, eps) * (1 + _per_token(scale_mlp, clean_BN1))
        h = h + _per_token(shift_mlp, clean_BN1)
        return x_BNC + _per_token(gate_mlp, clean_BN1) * self.mlp(h)

    def _fused_forward(self, x_BNC, mods, clean_BN1, text, cos_BNK, sin_BNK, n_real):
        """The same block through mugv-kernels: modulated LN, QK-RMSNorm + RoPE, and the two
        "residual add + next norm" pairs each in one pass (Triton on CUDA, reference else)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        eps, clean_BN = self.eps, clean_BN1[..., 0]
        h = mk.modulated_layer_norm(x_BNC, shift_msa, scale_msa, token_branch=clean_BN, eps=eps)
        attn = self.self_attention(h, cos_BNK, sin_BNK, n_real, fused=True)
        # affine LN of the cross-attention as a modulated LN: scale = weight - 1, shift = bias
        b, d = x_BNC.shape[0], x_BNC.shape[-1]
        w = self.cross_norm_weight.to(x_BNC.dtype)
        cross_scale = (w - 1).expand(b, 2, d)
        cross_shift = self.cross_norm_bias.to(x_BNC.dtype).expand(b, 2, d)
        x_BNC, h = mk.gated_residual_modulated_norm(
            x_BNC, attn, gate_msa, cross_shift, cross_scale, token_branch=clean_BN, eps=eps
        )
        cross = self.cross_attention(h, *text)
        ones = torch.ones_like(shift_mlp)
        x_BNC, h = mk.gated_residual_modulated_norm(
            x_BNC, cross, ones, shift_mlp, scale_mlp, token_branch=clean_BN, eps=eps
        )
        return x_BNC + _per_token(gate_mlp, clean_BN1) * self.mlp(h)


class FinalLayer(nn.Module):
    """Modulated LN (2-row table + t embedding, per token t / t=0) -> linear to patches."""

    def __init__(self, hidden: int, out_features: int, eps: float):
        super().__init__()
        self.eps = eps
        self.scale_shift_table = nn.Parameter(torch.zeros(2, hidden))
        self.linear = nn.Linear(hidden, out_features)

    def forward(self, x_BNC, emb_B2C, clean_BN1) -> torch.Tensor:
        table = self.scale_shift_table.to(emb_B2C.dtype)
        # emb_B2C[:, 0] = t embedding, [:, 1] = t=0 embedding; table rows = (shift, scale)
        shift_B2C = (table[0] + emb_B2C).to(x_BNC.dtype)
        scale_B2C = (table[1] + emb_B2C).to(x_BNC.dtype)
        h = layer_norm(x_BNC, self.eps) * (1 + _per_token(scale_B2C, clean_BN1))
        return self.linear(h + _per_token(shift_B2C, clean_BN1))


@dataclass
class MUGDiTOutput(BaseOutput):
    """``sample``: the prediction ``[B, out_channels, T, H, W]`` (float32 or wider); the
    velocity ``v = x0 - eps`` is its first ``in_channels`` channels."""

    sample: torch.Tensor


class MUGDiTTransformer3DModel(ModelMixin, ConfigMixin):
    """MUG-DiT video diffusion transformer (inference).

    Config fields are those of mugv-dit's ``ModelConfig`` that shape the weights.
    """

    _no_split_modules: ClassVar[list[str]] = ["MUGDiTBlock"]
    _skip_layerwise_casting_patterns: ClassVar[list[str]] = [
        "norm",
        "scale_shift_table",
        "start_token",
        "end_token",
    ]

    @register_to_config
    def __init__(
        self,
        hidden_size: int = 48,
        num_layers: int = 2,
        num_heads: int = 4,
        ffn_hidden_size: int | None = None,
        in_channels: int = 24,
        learn_sigma: bool = True,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        text_dim: int = 4096,
        null_text_tokens: int = 1,
        freq_embed_dim: int = 256,
        timestep_scale: float = 1000.0,
        rope_theta: float = 10000.0,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        if hidden_size % num_heads or (hidden_size // num_heads) % 6:
            raise ValueError(
                f"hidden_size={hidden_size} / num_heads={num_heads} must give a head dim "
                "divisible by 6 (3D RoPE)"
            )
        d = hidden_size
        pt, ph, pw = patch_size
        self.patch = (int(pt), int(ph), int(pw))
        self.out_channels = in_channels * (2 if learn_sigma else 1)
        self.x_embedder = nn.Linear(in_channels * pt * ph * pw, d)
        self.start_token = nn.Parameter(torch.zeros(d))
        self.end_token = nn.Parameter(torch.zeros(d))
        self.t_embedder = ScalarEmbedder(d, freq_embed_dim)
        self.fps_embedder = ScalarEmbedder(d, freq_embed_dim)
        self.t_block = nn.Linear(d, 6 * d)
        self.y_embedder = TextEmbedder(
            text_dim, d, null_text_tokens, norm_eps, random_null_caption=False
        )
        ffn = ffn_hidden_size or 4 * d
        self.blocks = nn.ModuleList(
            MUGDiTBlock(d, num_heads, ffn, norm_eps) for _ in range(num_layers)
        )
        self.final_layer = FinalLayer(d, pt * ph * pw * self.out_channels, norm_eps)
        self.sequence_parallel = None  # set by mugv_infer.parallel.apply_sequence_parallel
        self.step_cache = None  # a mugv_infer.step_cache.StepCache, set by the pipeline
        # the release's numerics (mugv_infer.release.apply_preset): the scaled timestep
        # rounded to this dtype (bfloat16) before its embedding; None: kept in float32
        self.timestep_round_dtype: torch.dtype | None = None
        self.blocks_runner = None  # replaces run_blocks (mugv_infer.graphed.apply_graphed_blocks)
        self._rope_cache: dict = {}

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_export(
        cls, path: str | Path, *, torch_dtype: torch.dtype = torch.float32, verify: bool = True
    ) -> MUGDiTTransformer3DModel:
        """Load a ``mugv.dit-export`` folder (written by ``mugv-dit export``)."""
        folder = mf.load_weights_folder(
            path, format=mf.DIT_EXPORT_FORMAT, verify=verify, check_finite=True
        )
        if folder.architecture != EXPORT_ARCHITECTURE:
            raise ValueError(
                f"{path}/config.json: architecture {folder.architecture!r}, "
                f"expected {EXPORT_ARCHITECTURE!r}"
            )
        config = {k: v for k, v in folder.config.items() if k not in _EXPORT_RUNTIME_FIELDS}
        try:
            model = cls(**config)
        except TypeError as e:
            raise ValueError(f"{path}/config.json: config does not fit MUG-DiT ({e})") from None
        model.load_export_state_dict(folder.state_dict, where=str(path))
        # nn.Module.to: diffusers' ModelMixin.to warns about fp32 modules even when there are none
        return nn.Module.to(model, torch_dtype).eval()

    def load_export_state_dict(self, state: dict[str, torch.Tensor], where: str = "") -> None:
        """Copy a full mugv-dit state dict, naming any missing / extra / misshapen tensor."""
        own = {name: tuple(t.shape) for name, t in self.state_dict().items()}
        check_state_dict_fits(state, own, where=f"{where}: weights do not fit the config")
        self.load_state_dict(state, strict=True)

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict under mugv-dit's names (what ``mugv.dit-export`` stores)."""
        return {k: v for k, v in self.state_dict().items()}

    def save_export(self, path: str | Path, extra: dict | None = None) -> Path:
        """Write this model as a ``mugv.dit-export`` folder (what mugv-dit writes)."""
        config = {k: v for k, v in self.config.items() if not k.startswith("_")}
        config["patch_size"] = list(config["patch_size"])
        return mf.save_weights_folder(
            path,
            format=mf.DIT_EXPORT_FORMAT,
            architecture=EXPORT_ARCHITECTURE,
            config=config,
            state_dict=self.export_state_dict(),
            extra=extra or {},
            producer=f"mugv-infer {__version__}",
        )

    @torch.no_grad()
    def initialize_weights(self, seed: int = 0, std: float = 0.02) -> MUGDiTTransformer3DModel:
        """Random weights as mugv-dit initialises them (tests and benchmarks)."""
        gens: dict = {}
        for name, p in self.named_parameters():
            if p.device not in gens:  # a generator on the parameters' device (fast on GPU)
                gens[p.device] = torch.Generator(device=p.device).manual_seed(seed)
            g = gens[p.device]
            if name.endswith("norm_weight"):
                p.fill_(1.0)
            elif name.endswith(("bias", "norm_bias")):
                p.zero_()
            elif name.endswith("scale_shift_table") or name.endswith("null_caption"):
                p.copy_(torch.randn(p.shape, generator=g, device=p.device) / p.shape[-1] ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g, device=p.device) * std)
        return self

    def set_fused_ops(self, enabled: bool = True) -> None:
        """Route the block's norms through mugv-kernels (Triton on CUDA; its exact PyTorch
        reference elsewhere)."""
        for block in self.blocks:
            block.fused_ops = enabled

    def set_attention_pad_head_dim(self, setting: int | str = "auto") -> None:
        """``runtime.attention_pad_head_dim`` for the self-attention of every block: ``auto``
        (72 -> 80 on FA4), ``0`` (never pad) or a head dim (see :class:`SelfAttention`)."""
        for block in self.blocks:
            sa = block.self_attention
            sa.pad_head_dim = padded_head_dim(setting, sa.head_dim)

    def set_attention_backend(self, backend: str) -> None:
        """``auto`` / ``sdpa`` / ``flash`` / ``fa4`` (:mod:`mugv_kernels.attention`) for the self-
        and cross-attention of every block."""
        if backend not in BACKENDS:
            raise AttentionBackendError(
                f"attention backend {backend!r} unknown; choose from {BACKENDS}"
            )
        for block in self.blocks:
            block.self_attention.backend = backend
            block.cross_attention.backend = backend

    # ------------------------------------------------------------------ forward
    def _tables(self, grid, frame_index_BF, device):
        fi = frame_index_BF.detach().cpu()
        key = (grid, tuple(fi.flatten().tolist()), tuple(fi.shape), str(device))
        if key not in self._rope_cache:
            if len(self._rope_cache) >= 4:
                self._rope_cache.pop(next(iter(self._rope_cache)))
            self._rope_cache[key] = dit_rope_tables(
                grid,
                self.config.hidden_size // self.config.num_heads,
                fi,
                theta=self.config.rope_theta,
                device=device,
            )
        return self._rope_cache[key]

    def _check_inputs(self, x_BCTHW: torch.Tensor, text_BLC: torch.Tensor) -> tuple[int, ...]:
        """Check the latents and text features; return the token grid ``(T', H', W')``."""
        cfg = self.config
        if x_BCTHW.ndim != 5 or x_BCTHW.shape[1] != cfg.in_channels:
            raise ValueError(
                f"hidden_states must be [B, {cfg.in_channels}, T, H, W], got {tuple(x_BCTHW.shape)}"
            )
        b, _, t, h, w = x_BCTHW.shape
        pt, ph, pw = self.patch
        if t % pt or h % ph or w % pw:
            raise ValueError(
                f"latent grid (T,H,W)=({t},{h},{w}) not divisible by patch {self.patch}"
            )
        if text_BLC.ndim != 3 or text_BLC.shape[0] != b or text_BLC.shape[2] != cfg.text_dim:
            raise ValueError(
                f"encoder_hidden_states must be [B={b}, L, {cfg.text_dim}], got {tuple(text_BLC.shape)}"
            )
        return (t // pt, h // ph, w // pw)

    @staticmethod
    def _checked_mask(mask_BL: torch.Tensor, text_BLC: torch.Tensor) -> torch.Tensor:
        if tuple(mask_BL.shape) != tuple(text_BLC.shape[:2]):
            raise ValueError(
                f"encoder_attention_mask must be {tuple(text_BLC.shape[:2])}, got {tuple(mask_BL.shape)}"
            )
        if not bool(mask_BL.any(1).all()):
            raise ValueError("every sample needs at least one unmasked text token")
        return mask_BL

    def _cross_attention_is_varlen(self, x_BNC: torch.Tensor) -> bool:
        """Whether the blocks' cross-attention runs a varlen kernel (on packed text keys) for
        these tokens: the backend is resolved at the head dim, as the blocks resolve it."""
        cross = self.blocks[0].cross_attention
        q_BNHD = x_BNC.unflatten(-1, (cross.heads, cross.head_dim))
        return resolve_backend(cross.backend, q_BNHD, path="varlen", needs_backward=False) != "sdpa"

    def run_blocks(
        self, x_BNC, mods_B26C, clean_BN1, text_BLC, mask_BL, cos_BNK, sin_BNK, n_real,
        text_pack=None,
    ) -> torch.Tensor:  # fmt: skip
        """The block stack (what :mod:`mugv_infer.graphed` captures as one CUDA graph)."""
        for block in self.blocks:
            x_BNC = block(
                x_BNC, mods_B26C, clean_BN1, text_BLC, mask_BL, cos_BNK, sin_BNK, n_real,
                text_pack,
            )  # fmt: skip
        return x_BNC

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        *,
        fps: torch.Tensor | float = 30.0,
        noisy_frames: torch.Tensor | None = None,
        frame_index: torch.Tensor | None = None,
        attention_kwargs: dict | None = None,
        return_dict: bool = True,
    ):
        """Predict ``[B, out_channels, T, H, W]`` from noisy latents.

        Args:
            hidden_states: latents ``[B, C, T, H, W]`` (conditioning frames clean).
            timestep: noise level s in [0, 1] per sample ``[B]`` (s = 1: pure noise).
            encoder_hidden_states: text features ``[B, L, text_dim]`` (padded).
            encoder_attention_mask: ``[B, L]``, True for real tokens (default: all real).
            fps: frames per second (scalar or ``[B]``).
            noisy_frames: ``[B, T]`` bool, False for clean conditioning frames (t=0
                modulation). Default: all noisy.
            frame_index: ``[B, T' + 2]`` RoPE time index of (start, T' token frames, end);
                default ``arange(T' + 2)``; clamped to [0, 479] as in the release.
            attention_kwargs: ``{"backend": "sdpa" | "fa4" | "auto"}`` for this call.
        """
        cfg = self.config
        x_BCTHW, text_BLC = hidden_states, encoder_hidden_states
        grid = self._check_inputs(x_BCTHW, text_BLC)
        b, _, t = x_BCTHW.shape[:3]
        pt = self.patch[0]
        device, dtype = x_BCTHW.device, self.t_block.weight.dtype
        mask_BL = encoder_attention_mask
        if mask_BL is not None:
            mask_BL = self._checked_mask(mask_BL.to(device=device, dtype=torch.bool), text_BLC)
        sigma_B = torch.as_tensor(timestep, device=device).reshape(-1).expand(b)
        fps_B = torch.as_tensor(fps, device=device).reshape(-1).expand(b)
        if noisy_frames is None:
            noisy_frames = torch.ones(b, t, dtype=torch.bool, device=device)
        if frame_index is None:
            frame_index = default_frame_index(b, grid[0])
        backend = (attention_kwargs or {}).get("backend")
        if backend is not None:
            self.set_attention_backend(backend)

        # conditioning: t and t=0 embeddings -> 6 modulation vectors per branch
        acc = acc_dtype(dtype)
        t_B = sigma_B.to(acc) * cfg.timestep_scale
        if self.timestep_round_dtype is not None:
            t_B = t_B.to(self.timestep_round_dtype).to(acc)
        t_emb = self.t_embedder(t_B)
        t0_emb = self.t_embedder(torch.zeros_like(sigma_B, dtype=acc))
        fps_emb = self.fps_embedder(fps_B.to(acc))
        emb_B2C = torch.stack([t_emb + fps_emb, t0_emb + fps_emb], dim=1)
        mods_B26C = self.t_block(F.silu(emb_B2C)).unflatten(-1, (6, -1))
        text_BLC = self.y_embedder(text_BLC)

        # tokens: [start, video (time-major), end]; clean = t=0 branch
        tokens_per_frame = grid[1] * grid[2]
        noisy_BM = noisy_frames.to(device)[:, ::pt].repeat_interleave(tokens_per_frame, dim=1)
        edge_B1 = torch.zeros(b, 1, dtype=torch.bool, device=device)
        clean_BN1 = ~torch.cat([edge_B1, noisy_BM, edge_B1], dim=1)[..., None]
        x_BMC = self.x_embedder(patchify(x_BCTHW.to(dtype), self.patch))
        x_BNC = torch.cat(
            [self.start_token.expand(b, 1, -1), x_BMC, self.end_token.expand(b, 1, -1)], dim=1
        )
        cos_BNK, sin_BNK = self._tables(grid, frame_index, device)
        n_real = x_BNC.shape[1]
        sp = self.sequence_parallel
        if sp is not None:  # this rank's shard of the (padded) sequence
            x_BNC, clean_BN1, cos_BNK, sin_BNK = (
                sp.shard(v) for v in (x_BNC, clean_BN1, cos_BNK, sin_BNK)
            )
        text_pack = None  # varlen cross-attention: the valid keys packed once for every layer
        if self.blocks and self._cross_attention_is_varlen(x_BNC):
            ones_BL = torch.ones(text_BLC.shape[:2], dtype=torch.bool, device=device)
            text_pack = PackedText.from_mask(ones_BL if mask_BL is None else mask_BL)
        cache = self.step_cache
        if cache is not None and cache.can_skip(x_BNC, mods_B26C):
            x_BNC = cache.reuse(x_BNC)
        else:
            x_in = x_BNC
            run_blocks = self.blocks_runner or self.run_blocks
            x_BNC = run_blocks(
                x_BNC, mods_B26C, clean_BN1, text_BLC, mask_BL, cos_BNK, sin_BNK, n_real,
                text_pack,
            )  # fmt: skip
            if cache is not None:
                cache.store(x_in, x_BNC)
        out_BNP = self.final_layer(x_BNC, emb_B2C, clean_BN1)
        if sp is not None:
            out_BNP = sp.gather(out_BNP)[:, :n_real]
        out = unpatchify(out_BNP[:, 1:-1], grid, self.patch, self.out_channels)
        out = out.to(acc_dtype(out.dtype))
        return MUGDiTOutput(sample=out) if return_dict else (out,)


__all__ = ["MAX_FRAME_INDEX", "MUGDiTOutput", "MUGDiTTransformer3DModel"]
