"""2D image-VAE trunk: diffusers ``AutoencoderKL`` blocks cut at the H/8 feature map.

Tensor legend: N frames (batch x time folded), C channels, H, W height/width.
"""

from __future__ import annotations

import types
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.models.attention_processor import Attention
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import nn
from torch.utils.checkpoint import checkpoint

from mugv_vae.config import TrunkConfig
from mugv_vae.model.nhwc_ops import (
    bias_residual_nhwc,
    chunked_attention,
    group_norm_silu_nhwc,
    kernels_apply,
    phase_interleave,
    phase_interleave_applies,
)

# Parts of a full AutoencoderKL that the cut trunk does not use.
UNUSED_AUTOENCODER_KL_PREFIXES = (
    "encoder.conv_norm_out.",
    "encoder.conv_out.",
    "decoder.conv_in.",
    "quant_conv.",
    "post_quant_conv.",
)


def gn_silu(x: torch.Tensor, norm: nn.GroupNorm, fused: bool, nhwc: bool = False) -> torch.Tensor:
    """``silu(norm(x))``: the VAE's channels-last Triton kernels when ``nhwc`` and they apply
    (:mod:`mugv_vae.model.nhwc_ops`), else one ``mugv_kernels.group_norm_silu`` call when
    ``fused``, else ``F.group_norm`` + ``F.silu``. The output keeps ``x``'s memory format."""
    if nhwc and kernels_apply(x, norm.num_groups):
        return group_norm_silu_nhwc(x, norm)
    if fused:
        from mugv_kernels import group_norm_silu

        return group_norm_silu(x, norm.num_groups, norm.weight, norm.bias, eps=norm.eps)
    return F.silu(norm(x))


def _resnet_nhwc(block: ResnetBlock2D, x_NCHW: torch.Tensor, fused: bool) -> torch.Tensor:
    """Inference form of :func:`resnet_forward` on channels-last CUDA activations: the convs
    run without their bias; conv1's is folded into the second GroupNorm+SiLU and conv2's is
    added together with the shortcut in one pass."""
    conv1, conv2 = block.conv1, block.conv2
    h = conv1._conv_forward(gn_silu(x_NCHW, block.norm1, fused, True), conv1.weight, None)
    h = group_norm_silu_nhwc(h, block.norm2, conv1.bias, inplace=True)
    h = conv2._conv_forward(block.dropout(h), conv2.weight, None)
    bias = conv2.bias
    if block.conv_shortcut is None:
        shortcut = x_NCHW
    else:  # the shortcut conv's bias joins conv2's in the one residual pass
        sc = block.conv_shortcut
        shortcut = sc._conv_forward(x_NCHW, sc.weight, None)
        if sc.bias is not None:
            bias = sc.bias if bias is None else bias + sc.bias
    out = bias_residual_nhwc(h, bias, shortcut)
    if block.output_scale_factor != 1.0:
        out = out / block.output_scale_factor
    return out


def resnet_forward(
    block: ResnetBlock2D, x_NCHW: torch.Tensor, fused: bool, nhwc: bool = False
) -> torch.Tensor:
    """``ResnetBlock2D.forward`` of a VAE block (no time embedding, no up/down-sampling):
    GroupNorm+SiLU -> conv -> GroupNorm+SiLU -> (dropout) -> conv, plus the shortcut. Same
    weights and maths as diffusers; the residual sum is written into the conv output.
    ``nhwc``: :func:`_resnet_nhwc` where its kernels apply."""
    if nhwc and kernels_apply(x_NCHW, block.norm1.num_groups):
        return _resnet_nhwc(block, x_NCHW, fused)
    h = block.conv1(gn_silu(x_NCHW, block.norm1, fused))
    h = block.conv2(block.dropout(gn_silu(h, block.norm2, fused)))
    shortcut = x_NCHW if block.conv_shortcut is None else block.conv_shortcut(x_NCHW)
    h = h.add_(shortcut) if not torch.is_grad_enabled() else h + shortcut
    if block.output_scale_factor != 1.0:
        h = h / block.output_scale_factor
    return h


_NEAREST_MAX_NUMEL = 2**31 - 1
"""``upsample_nearest2d`` on channels-last tensors fails above this many output elements
(pytorch/pytorch#141831); larger batches are split."""


def upsample_forward(up: Upsample2D, x_NCHW: torch.Tensor) -> torch.Tensor:
    """Nearest 2x up-sampling in the input dtype, then the conv. diffusers casts bf16 to fp32
    around the interpolation; nearest is a copy, so that changes nothing but the traffic."""
    n = x_NCHW.shape[0]
    per_frame = x_NCHW[0].numel() * 4
    if n * per_frame > _NEAREST_MAX_NUMEL and n > 1:
        step = max(1, _NEAREST_MAX_NUMEL // per_frame)
        return torch.cat([upsample_forward(up, part) for part in x_NCHW.split(step)])
    return up.conv(F.interpolate(x_NCHW, scale_factor=2.0, mode="nearest"))


# Tap sums of a 3x3 kernel seen through a nearest 2x up-sampling, per output phase: phase 0
# reads input rows (i-1, i) with taps (w0, w1+w2), phase 1 rows (i, i+1) with (w0+w1, w2).
_PHASE_TAPS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])


def fold_upsample_conv(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor | None]:
    """3x3 conv after a nearest 2x up-sampling as one 2x2 conv on the small input with
    ``4 * C_out`` outputs (phase ``(a, b)`` in channels ``(2a + b) * C_out ...``): 16 instead
    of 36 multiply-adds per output pixel and channel pair. Taps summed in (at least) fp32."""
    w = conv.weight.detach()
    w = w.to(torch.promote_types(w.dtype, torch.float32))  # fp32 sums (fp64 stays fp64)
    taps = _PHASE_TAPS.to(device=w.device, dtype=w.dtype)
    # [a, b, C_out, C_in, 2, 2] = sum_ky,kx taps[a, r, ky] * w[.., ky, kx] * taps[b, c, kx]
    k = torch.einsum("ary,oiyx,bcx->aboirc", taps, w, taps)
    folded = k.reshape(4 * w.shape[0], w.shape[1], 2, 2).to(conv.weight.dtype)
    folded = folded.contiguous(memory_format=_weight_format(conv.weight))
    bias = None if conv.bias is None else conv.bias.detach().repeat(4)
    return folded, bias


def _weight_format(w: torch.Tensor) -> torch.memory_format:
    if not w.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def folded_upsample_forward(up: Upsample2D, x_NCHW: torch.Tensor, cache: dict) -> torch.Tensor:
    """:func:`upsample_forward` through :func:`fold_upsample_conv` (weights cached per
    module and parameter version): one 2x2 conv at the input size, then the four phases are
    written into the output. Same function up to the rounding of the summed taps."""
    w = up.conv.weight
    key = (id(up), w._version, w.dtype, w.device, _weight_format(w))
    if key not in cache:
        cache.clear() if len(cache) > 64 else None
        cache[key] = fold_upsample_conv(up.conv)
    weight, bias = cache[key]
    n, _, h, w_ = x_NCHW.shape
    c = up.conv.out_channels
    if phase_interleave_applies(x_NCHW, c):  # the interleave pass adds the bias
        phases = F.conv2d(x_NCHW, weight, None, padding=1)  # [N, 4C, H+1, W+1]
        return phase_interleave(phases, c, up.conv.bias)
    phases = F.conv2d(x_NCHW, weight, bias, padding=1)
    fmt = _weight_format(phases) if phases.ndim == 4 else torch.contiguous_format
    out = torch.empty((n, c, 2 * h, 2 * w_), device=x_NCHW.device, dtype=phases.dtype)
    out = out.contiguous(memory_format=fmt)
    out6 = out.view(n, c, h, 2, w_, 2)
    for a in (0, 1):
        for b in (0, 1):
            p = 2 * a + b
            out6[:, :, :, a, :, b].copy_(phases[:, p * c : (p + 1) * c, a : a + h, b : b + w_])
    return out


def downsample_forward(down: Downsample2D, x_NCHW: torch.Tensor) -> torch.Tensor:
    """diffusers ``Downsample2D`` with ``padding=0``: pad right/bottom by one, stride-2 conv."""
    if down.padding == 0:
        x_NCHW = F.pad(x_NCHW, (0, 1, 0, 1))
    return down.conv(x_NCHW)


WIDE_HEAD = 256
"""Head dims above this have no flash kernel; ``nhwc`` inference uses chunked products."""


def attention_forward(attn: Attention, x_NCHW: torch.Tensor, nhwc: bool = False) -> torch.Tensor:
    """The VAE mid-block self-attention (diffusers ``AttnProcessor2_0`` maths): GroupNorm ->
    q, k, v over the H*W tokens of each frame -> SDPA -> out projection -> + residual. On a
    channels-last input the token view ``[N, H*W, C]`` is free. ``nhwc`` (CUDA inference,
    head dim > ``WIDE_HEAD``): :func:`~mugv_vae.model.nhwc_ops.chunked_attention`."""
    n, c, h, w = x_NCHW.shape
    y_NCHW = attn.group_norm(x_NCHW)
    tokens_NLC = y_NCHW.permute(0, 2, 3, 1).reshape(n, h * w, c)
    heads = attn.heads
    q, k, v = (
        proj(tokens_NLC).view(n, h * w, heads, -1).transpose(1, 2)
        for proj in (attn.to_q, attn.to_k, attn.to_v)
    )
    wide = q.shape[-1] > WIDE_HEAD and x_NCHW.is_cuda and not torch.is_grad_enabled()
    if nhwc and wide:
        o = chunked_attention(q, k, v)
    else:
        o = F.scaled_dot_product_attention(q, k, v)
    o_NLC = o.transpose(1, 2).reshape(n, h * w, -1)
    o_NLC = attn.to_out[1](attn.to_out[0](o_NLC))
    out_NCHW = o_NLC.view(n, h, w, c).permute(0, 3, 1, 2)
    if attn.residual_connection:
        out_NCHW = out_NCHW + x_NCHW
    if attn.rescale_output_factor != 1.0:
        out_NCHW = out_NCHW / attn.rescale_output_factor
    return out_NCHW


def block_forward(
    block: nn.Module,
    x_NCHW: torch.Tensor,
    fused: bool,
    nhwc: bool = False,
    fold_cache: dict | None = None,
) -> torch.Tensor:
    """One trunk block (``DownEncoderBlock2D``, ``UpDecoderBlock2D`` or ``UNetMidBlock2D``)
    through the functions above."""
    if isinstance(block, UNetMidBlock2D):
        x_NCHW = resnet_forward(block.resnets[0], x_NCHW, fused, nhwc)
        for attn, resnet in zip(block.attentions, block.resnets[1:]):
            if attn is not None:
                x_NCHW = attention_forward(attn, x_NCHW, nhwc)
            x_NCHW = resnet_forward(resnet, x_NCHW, fused, nhwc)
        return x_NCHW
    for resnet in block.resnets:
        x_NCHW = resnet_forward(resnet, x_NCHW, fused, nhwc)
    for down in getattr(block, "downsamplers", None) or ():
        x_NCHW = downsample_forward(down, x_NCHW)
    for up in getattr(block, "upsamplers", None) or ():
        if fold_cache is not None and not torch.is_grad_enabled():
            x_NCHW = folded_upsample_forward(up, x_NCHW, fold_cache)
        else:
            x_NCHW = upsample_forward(up, x_NCHW)
    return x_NCHW


_BLOCK_OPTS = "_mugv_block_opts"
"""Attribute of each trunk block: ``(fused, nhwc, fold_cache)`` set by ``SpatialTrunk``."""


def _functional_block_forward(self: nn.Module, x_NCHW: torch.Tensor, *args, **kwargs):
    """Installed as each trunk block's ``forward``: the block still runs through its own
    ``__call__`` (FSDP2 / hooks see it) but computes :func:`block_forward`."""
    fused, nhwc, fold_cache = getattr(self, _BLOCK_OPTS, (False, False, None))
    return block_forward(self, x_NCHW, fused, nhwc, fold_cache)


def _check_block(block: nn.Module) -> None:
    """Refuse trunk blocks the functions above do not cover (time embeddings, other
    up/down-samplers, spatial norms)."""
    for m in block.modules():
        if isinstance(m, ResnetBlock2D) and (
            m.time_emb_proj is not None
            or m.upsample is not None
            or m.downsample is not None
            or not isinstance(m.nonlinearity, nn.SiLU)
        ):
            raise ValueError(f"unsupported trunk res-block configuration: {m}")
        if isinstance(m, Attention) and (m.spatial_norm is not None or m.group_norm is None):
            raise ValueError(f"unsupported trunk attention configuration: {m}")
        if isinstance(m, Upsample2D) and (m.use_conv_transpose or not m.interpolate):
            raise ValueError(f"unsupported trunk up-sampler: {m}")


def _autoencoder_kl(cfg: TrunkConfig, in_channels: int) -> AutoencoderKL:
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        latent_channels=4,
        norm_num_groups=cfg.norm_num_groups,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=cfg.mid_block_add_attention,
    )


class SpatialTrunk(nn.Module):
    """Per-frame image encoder to ``feature_channels`` at H/8, and the matching decoder.

    ``encode`` runs ``conv_in -> down_blocks -> mid_block`` and multiplies by
    ``feature_scale``; ``decode`` divides by it and runs ``mid_block -> up_blocks ->
    GroupNorm -> SiLU -> conv_out``.
    """

    def __init__(self, cfg: TrunkConfig, in_channels: int = 3) -> None:
        super().__init__()
        self.cfg = cfg
        full = _autoencoder_kl(cfg, in_channels)
        self.encoder = full.encoder
        self.decoder = full.decoder
        # Drop the image VAE's own bottleneck: the temporal VAE replaces it.
        del self.encoder.conv_norm_out, self.encoder.conv_act, self.encoder.conv_out
        del self.decoder.conv_in
        self.gradient_checkpointing = False
        self.fused = False
        self.nhwc_ops = False
        self.fold_upsample = False
        self._fold_cache: dict = {}
        self.channels_last = False
        self.compile = False
        self._compiled: dict[str, object] = {}
        for block in self._blocks():
            _check_block(block)
            block.forward = types.MethodType(_functional_block_forward, block)

    def _blocks(self) -> list[nn.Module]:
        enc, dec = self.encoder, self.decoder
        return [*enc.down_blocks, enc.mid_block, dec.mid_block, *dec.up_blocks]

    def _refresh_block_opts(self) -> None:
        opts = (self.fused, self.nhwc_ops, self._fold_cache if self.fold_upsample else None)
        for block in self._blocks():
            setattr(block, _BLOCK_OPTS, opts)

    def set_fused_group_norm_silu(self, fused: bool) -> None:
        """Run every GroupNorm+SiLU pair (res-blocks and the decoder's output norm) through
        ``mugv_kernels.group_norm_silu``, or through ``F.group_norm`` + ``F.silu``."""
        self.fused = fused

    def set_channels_last(self, enabled: bool) -> None:
        """Store conv weights and run activations channels-last (NHWC memory), cuDNN's fast
        layout for bf16/fp16 convolutions. Same maths; outputs are NHWC-strided tensors."""
        self.channels_last = enabled
        self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)

    def set_compile(self, enabled: bool) -> None:
        """``torch.compile`` the per-frame encode and decode (CUDA inputs only; CPU calls
        stay eager). Compiled lazily on first use, recompiled by dynamo on new shapes."""
        self.compile = enabled
        self._compiled = {}

    def _run(self, fn, x: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, x, use_reentrant=False)
        return fn(x)

    def _encode_eager(self, x_NCHW: torch.Tensor) -> torch.Tensor:
        h = self.encoder.conv_in(x_NCHW)
        for block in self.encoder.down_blocks:
            h = self._run(block, h)
        h = self._run(self.encoder.mid_block, h)
        return h * self.cfg.feature_scale

    def _decode_eager(self, f_NCHW: torch.Tensor) -> torch.Tensor:
        h = f_NCHW / self.cfg.feature_scale
        h = self._run(self.decoder.mid_block, h)
        for block in self.decoder.up_blocks:
            h = self._run(block, h)
        h = gn_silu(h, self.decoder.conv_norm_out, self.fused, self.nhwc_ops)
        return self.decoder.conv_out(h)

    def _maybe_compiled(self, name: str, x: torch.Tensor):
        eager = self._encode_eager if name == "encode" else self._decode_eager
        if not (self.compile and x.is_cuda):
            return eager
        if name not in self._compiled:
            self._compiled[name] = torch.compile(eager)
        return self._compiled[name]

    def _prepare(self, x_NCHW: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            return x_NCHW.contiguous(memory_format=torch.channels_last)
        return x_NCHW

    def encode(self, x_NCHW: torch.Tensor) -> torch.Tensor:
        """Frames in [-1, 1] ``[N, 3, H, W]`` -> features ``[N, C_feat, H/8, W/8]``."""
        x_NCHW = self._prepare(x_NCHW)
        self._refresh_block_opts()
        return self._maybe_compiled("encode", x_NCHW)(x_NCHW)

    def decode(self, f_NCHW: torch.Tensor) -> torch.Tensor:
        """Features ``[N, C_feat, H/8, W/8]`` -> frames ``[N, 3, H, W]``."""
        f_NCHW = self._prepare(f_NCHW)
        self._refresh_block_opts()
        return self._maybe_compiled("decode", f_NCHW)(f_NCHW)

    def load_autoencoder_kl(self, path: str | Path) -> None:
        """Load a local diffusers ``AutoencoderKL`` folder (e.g. the SDXL VAE) into the trunk.

        Only the parts the trunk uses are taken; shapes must match this config.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"AutoencoderKL folder {path} does not exist")
        full = AutoencoderKL.from_pretrained(str(path), local_files_only=True)
        state = {
            k: v
            for k, v in full.state_dict().items()
            if not k.startswith(UNUSED_AUTOENCODER_KL_PREFIXES)
        }
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"AutoencoderKL at {path} does not fit the trunk config: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
