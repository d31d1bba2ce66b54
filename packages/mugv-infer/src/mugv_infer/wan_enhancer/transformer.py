"""The release enhancer's DiT on a stock diffusers ``WanTransformer3DModel``.

Two things make the release's DiT differ from a plain Wan2.1 T2V model, both expressed here
without a new model class:

- **A second patch embedding** fed the clean video latents ``y``, its output added to the
  first one's: ``conv(x; W1, b1) + conv(y; W2, b2) = conv([x; y]; [W1 | W2], b1 + b2)``. So
  the two fold exactly into one patch embedding over 32 channels (:func:`fold_patch_embeddings`)
  and the model is a ``WanTransformer3DModel`` with ``in_channels=32`` fed
  ``cat([noisy, clean], dim=1)``.
- **Per-frame timesteps**: the first latent frame stays clean and takes the modulation of
  t = 0, every other frame that of t. diffusers supports per-token timesteps
  (``timestep`` of shape ``[B, seq_len]``, the Wan 2.2 TI2V path) but materialises
  ``[B, seq_len, 6, D]`` float32 modulations per block (3.6 GB per video at 720p x 105
  frames). :func:`framewise_forward` computes one modulation per latent frame and broadcasts
  it over the frame's tokens: the same numbers, ``[B, T, 6, D]`` in memory.

The release computes the timestep's sinusoid in float64 and the time MLP and its projection
in float32 (diffusers: the sinusoid in float32, the projection in the text's dtype):
:func:`framewise_forward` follows the release (``sinusoid_dtype=torch.float64``).

Legend: B batch, C channels, T latent frames, H/W latent rows/columns, S tokens per frame,
N = T S tokens, D model width, L text tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fold_patch_embeddings(
    weight1: torch.Tensor, bias1: torch.Tensor, weight2: torch.Tensor, bias2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two patch embeddings (``Conv3d`` weights ``[D, C, pt, ph, pw]``, biases ``[D]``) whose
    outputs are summed -> one over ``2 C`` input channels: ``([W1 | W2], b1 + b2)``. Exact:
    the convolution is linear in its input channels."""
    if weight1.shape != weight2.shape or bias1.shape != bias2.shape:
        raise ValueError(
            f"patch embeddings differ in shape: weight {tuple(weight1.shape)} vs "
            f"{tuple(weight2.shape)}, bias {tuple(bias1.shape)} vs {tuple(bias2.shape)}"
        )
    return torch.cat([weight1, weight2], dim=1), bias1 + bias2


def sinusoid(timestep: torch.Tensor, dim: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Wan's timestep features ``[cos(t f_i), sin(t f_i)]``, ``f_i = 10000^(-i / (dim/2))``,
    computed in ``dtype`` (the release: float64) and returned in float32."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=dtype, device=timestep.device) / half)
    angles = torch.outer(timestep.to(dtype), freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).float()


def _linear32(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` in float32 whatever the layer's dtype (the release's fp32 autocast)."""
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(x.float(), layer.weight.float(), bias)


def frame_timesteps(
    timestep: torch.Tensor | float, batch: int, frames: int, clean_frames: int = 1
) -> torch.Tensor:
    """``[B, T]`` timesteps: 0 for the first ``clean_frames`` latent frames, ``timestep``
    (a number or ``[B]``) for the others."""
    t = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1)
    t_BT = t.expand(batch).reshape(batch, 1).repeat(1, frames)
    t_BT[:, :clean_frames] = 0.0
    return t_BT


def _block(block, x_BND, text_BLD, mod_BT6D, rotary, frames: int) -> torch.Tensor:
    """One ``WanTransformerBlock`` with a modulation per latent frame (``mod_BT6D``: the time
    projection, float32); the block's own submodules, diffusers' arithmetic."""
    b, n, d = x_BND.shape
    e = (block.scale_shift_table.float().view(1, 1, 6, d) + mod_BT6D).unsqueeze(2)  # B T 1 6 D
    shift, scale, gate, c_shift, c_scale, c_gate = e.unbind(3)  # each B T 1 D

    def modulate(norm, x, shift_, scale_):
        y = norm(x.float()).view(b, frames, -1, d) * (1 + scale_) + shift_
        return y.view(b, n, d).type_as(x)

    def gated(x, y, gate_):
        out = x.float().view(b, frames, -1, d) + y.float().view(b, frames, -1, d) * gate_
        return out.view(b, n, d).type_as(x)

    x_BND = gated(
        x_BND, block.attn1(modulate(block.norm1, x_BND, shift, scale), None, None, rotary), gate
    )
    x_BND = x_BND + block.attn2(block.norm2(x_BND.float()).type_as(x_BND), text_BLD, None, None)
    return gated(x_BND, block.ffn(modulate(block.norm3, x_BND, c_shift, c_scale)), c_gate)


def framewise_forward(
    transformer,
    hidden_BCTHW: torch.Tensor,
    timestep_BT: torch.Tensor,
    text_BLD: torch.Tensor,
    *,
    sinusoid_dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """The velocity ``[B, C_out, T, H, W]`` of a ``WanTransformer3DModel`` with one timestep
    per latent frame (``timestep_BT`` ``[B, T]``; patch size 1 in time).

    Equals diffusers' forward with the per-token timesteps ``timestep_BT`` repeated over each
    frame's tokens (with ``sinusoid_dtype=torch.float32`` and a float32 text; see the module
    docstring for the release's float64 sinusoid and float32 time projection)."""
    cfg = transformer.config
    b, _, t, h, w = hidden_BCTHW.shape
    p_t, p_h, p_w = cfg.patch_size
    if p_t != 1:
        raise ValueError(f"framewise_forward needs a temporal patch size of 1, got {p_t}")
    if tuple(timestep_BT.shape) != (b, t):
        raise ValueError(f"timestep_BT must be [B, T] = [{b}, {t}], got {tuple(timestep_BT.shape)}")
    hp, wp = h // p_h, w // p_w
    d = transformer.proj_out.in_features

    rotary = transformer.rope(hidden_BCTHW)
    x_BND = transformer.patch_embedding(hidden_BCTHW).flatten(2).transpose(1, 2).contiguous()
    embed = transformer.condition_embedder
    features = sinusoid(timestep_BT.reshape(-1), cfg.freq_dim, sinusoid_dtype)
    temb_BTD = _linear32(
        embed.time_embedder.linear_2, F.silu(_linear32(embed.time_embedder.linear_1, features))
    )
    mod_BT6D = _linear32(embed.time_proj, F.silu(temb_BTD)).view(b, t, 6, d)
    temb_BTD = temb_BTD.view(b, t, d)
    text_BLD = embed.text_embedder(text_BLD)

    for block in transformer.blocks:
        x_BND = _block(block, x_BND, text_BLD, mod_BT6D, rotary, t)

    shift, scale = (
        transformer.scale_shift_table.float().view(1, 1, 2, d) + temb_BTD.unsqueeze(2)
    ).unbind(2)
    y = transformer.norm_out(x_BND.float()).view(b, t, hp * wp, d)
    y = (y * (1 + scale.unsqueeze(2)) + shift.unsqueeze(2)).view(b, -1, d).type_as(x_BND)
    y = transformer.proj_out(y)
    y = y.reshape(b, t, hp, wp, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return y.flatten(6, 7).flatten(4, 5).flatten(2, 3)
