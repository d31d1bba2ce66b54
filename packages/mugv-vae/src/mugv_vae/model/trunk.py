"""2D image-VAE trunk: diffusers ``AutoencoderKL`` blocks cut at the H/8 feature map.

Tensor legend: N frames (batch x time folded), C channels, H, W height/width.
"""

from __future__ import annotations

import types
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from diffusers.models.resnet import ResnetBlock2D
from torch import nn
from torch.utils.checkpoint import checkpoint

from mugv_vae.config import TrunkConfig

# Parts of a full AutoencoderKL that the cut trunk does not use.
UNUSED_AUTOENCODER_KL_PREFIXES = (
    "encoder.conv_norm_out.",
    "encoder.conv_out.",
    "decoder.conv_in.",
    "quant_conv.",
    "post_quant_conv.",
)


def _gn_silu(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    from mugv_kernels import group_norm_silu

    return group_norm_silu(x, norm.num_groups, norm.weight, norm.bias, eps=norm.eps)


def _fused_resnet_forward(self: ResnetBlock2D, x: torch.Tensor, temb=None, *args, **kwargs):
    """``ResnetBlock2D.forward`` of a VAE block (no time embedding, no up/down-sampling) with
    each GroupNorm+SiLU pair fused into one kernel. Same weights, same maths."""
    h = self.conv1(_gn_silu(x, self.norm1))
    h = self.conv2(self.dropout(_gn_silu(h, self.norm2)))
    if self.conv_shortcut is not None:
        x = self.conv_shortcut(x)
    return (x + h) / self.output_scale_factor


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

    def set_fused_group_norm_silu(self, fused: bool) -> None:
        """Route every res-block's GroupNorm+SiLU (and the decoder's output norm) through
        ``mugv_kernels.group_norm_silu``, or back to the diffusers/PyTorch path."""
        self.fused = fused
        for m in self.modules():
            if not isinstance(m, ResnetBlock2D):
                continue
            plain = m.upsample is None and m.downsample is None and m.time_emb_proj is None
            if fused and plain and isinstance(m.nonlinearity, nn.SiLU):
                m.forward = types.MethodType(_fused_resnet_forward, m)
            elif "forward" in m.__dict__:
                del m.forward

    def _run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(module, x, use_reentrant=False)
        return module(x)

    def encode(self, x_NCHW: torch.Tensor) -> torch.Tensor:
        """Frames in [-1, 1] ``[N, 3, H, W]`` -> features ``[N, C_feat, H/8, W/8]``."""
        h = self.encoder.conv_in(x_NCHW)
        for block in self.encoder.down_blocks:
            h = self._run(block, h)
        h = self._run(self.encoder.mid_block, h)
        return h * self.cfg.feature_scale

    def decode(self, f_NCHW: torch.Tensor) -> torch.Tensor:
        """Features ``[N, C_feat, H/8, W/8]`` -> frames ``[N, 3, H, W]``."""
        h = f_NCHW / self.cfg.feature_scale
        h = self._run(self.decoder.mid_block, h)
        for block in self.decoder.up_blocks:
            h = self._run(block, h)
        if self.fused:
            h = _gn_silu(h, self.decoder.conv_norm_out)
        else:
            h = self.decoder.conv_act(self.decoder.conv_norm_out(h))
        return self.decoder.conv_out(h)

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
