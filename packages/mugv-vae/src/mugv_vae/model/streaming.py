"""Bounded-memory execution of encode and decode: chunk groups, frame micro-batches, and
outputs written into preallocated tensors.

Tensor legend: B batch, C channels, T frames, K latents, H, W pixels, h, w features/latents.

Encode streams over groups of 8-frame chunks: the trunk encodes the group's frames in
micro-batches of at most ``frame_batch`` frames into one feature buffer (the first chunk's
7 padding frames are copies of frame 0's features), the temporal encoder turns the group's
chunks into moments, and those are written into the output. Decode streams over groups of
decoder windows the same way, writing decoded frames straight into the output video.

Group and micro-batch sizes come from ``MUGVAE.frame_batch_size`` / ``chunk_batch_size``
when set, else from ``VAERuntime.max_activation_bytes`` through the per-frame and per-chunk
activation estimates below, else everything runs at once. None of this changes the maths:
every 8-frame chunk and every decoder window is computed independently either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mugv_vae.config import SPATIAL_COMPRESSION, TIME_COMPRESSION, VAEConfig, VAERuntime

PAD = TIME_COMPRESSION - 1
"""Frames of first-frame padding in front of every clip (the 1+8k rule)."""


@dataclass(frozen=True)
class Plan:
    """Micro-batch sizes of one encode or decode call (None: no limit)."""

    frame_batch: int | None
    chunk_batch: int | None


def trunk_bytes_per_frame(
    config: VAEConfig, runtime: VAERuntime, height: int, width: int, elem: int
) -> int:
    """Estimated peak activation bytes of the trunk per frame of ``height x width`` pixels.

    Encoder: about four full-resolution tensors of ``block_out_channels[0]`` channels live at
    once in a full-resolution res-block. Decoder: the last up-sampling writes
    ``block_out_channels[1]`` channels at full resolution and the first full-resolution
    res-block reads them (input, its GroupNorm output and the narrower conv outputs): about
    3 such tensors, 4 with ``fold_upsample_conv`` (its four-phase conv output is live beside
    the result). Measured on an H100 at 720p, bf16, channels-last (MiB per frame): encode 905
    to 1135, decode 1251 to 1364, decode with folding 1703; this gives 1125, 1350 and 1800.
    The larger is used for both.
    """
    if config.variant == "unified":
        return 0
    c0, c1 = config.trunk.block_out_channels[:2]
    dec = (4 if runtime.fold_upsample_conv else 3) * c1
    return int(max(4 * c0, dec) * height * width * elem)


def temporal_bytes_per_chunk(config: VAEConfig, height: int, width: int, elem: int) -> int:
    """Estimated peak bytes of the temporal encoder/decoder per 8-frame chunk (or per latent
    of a decoder window), its input/output features included: about twice the features of
    8 frames for the released architecture; the unified variant runs ``channels[0]``
    channels at full resolution over 8 frames (about four such tensors)."""
    if config.variant == "unified":
        return 4 * TIME_COMPRESSION * config.unified.channels[0] * height * width * elem
    h, w = height // SPATIAL_COMPRESSION, width // SPATIAL_COMPRESSION
    return 2 * TIME_COMPRESSION * config.trunk.feature_channels * h * w * elem


def plan(
    config: VAEConfig,
    runtime: VAERuntime,
    height: int,
    width: int,
    elem: int,
    frame_batch: int | None,
    chunk_batch: int | None,
) -> Plan:
    """Micro-batch sizes for frames of ``height x width`` pixels: explicit sizes win; else
    ``runtime.max_activation_bytes`` is split between the chunk group (temporal pass and its
    feature buffer) and the trunk micro-batch; at least one of each always runs."""
    budget = runtime.max_activation_bytes
    if budget is None or (frame_batch is not None and chunk_batch is not None):
        return Plan(frame_batch, chunk_batch)
    per_chunk = max(1, temporal_bytes_per_chunk(config, height, width, elem))
    per_frame = max(1, trunk_bytes_per_frame(config, runtime, height, width, elem))
    if chunk_batch is None:
        chunk_batch = max(1, budget // (2 * per_chunk))
    if frame_batch is None:
        # The group's features (half of its temporal estimate) stay alive beside the trunk.
        left = budget - chunk_batch * per_chunk // 2
        frame_batch = max(1, left // per_frame)
    return Plan(frame_batch, chunk_batch)


def _frame_batches(start: int, stop: int, size: int | None):
    """Ranges ``[s, e)`` covering ``[start, stop)`` in steps of ``size`` (None: one)."""
    step = stop - start if size is None else size
    for s in range(start, stop, max(1, step)):
        yield s, min(stop, s + step)


def _like(x: torch.Tensor, shape, dtype=None) -> torch.Tensor:
    """An empty 5D tensor whose memory order matches 4D ``x`` (NDHWC for NHWC ``x``)."""
    cl = (
        x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    )
    fmt = torch.channels_last_3d if cl else torch.contiguous_format
    return torch.empty(shape, device=x.device, dtype=dtype or x.dtype, memory_format=fmt)


def encode_moments(model, video_BCTHW: torch.Tensor) -> torch.Tensor:
    """Posterior moments ``[B, 2*latent, 1+k, h, w]`` of a checked 1+8k video."""
    b, _, t, height, width = video_BCTHW.shape
    k = 1 + (t - 1) // TIME_COMPRESSION
    p = plan(
        model.config,
        model.runtime,
        height,
        width,
        video_BCTHW.element_size(),
        model.frame_batch_size,
        model.chunk_batch_size,
    )
    moments = None
    for bi in range(b):
        for j0, j1 in _frame_batches(0, k, p.chunk_batch):
            # Chunk j covers frames 8j-7 .. 8j; chunk 0 is frame 0 behind 7 copies of it.
            f0, f1 = max(0, TIME_COMPRESSION * j0 - PAD), TIME_COMPRESSION * (j1 - 1) + 1
            pad = PAD if j0 == 0 else 0
            feats = None
            for s, e in _frame_batches(f0, f1, p.frame_batch):
                f_NChw = model.trunk.encode(video_BCTHW[bi, :, s:e].transpose(0, 1))
                if feats is None:
                    _, c, h, w = f_NChw.shape
                    feats = _like(f_NChw, (1, c, pad + f1 - f0, h, w))
                feats[0, :, pad + s - f0 : pad + e - f0] = f_NChw.transpose(0, 1)
            if pad:
                feats[:, :, :pad] = feats[:, :, pad : pad + 1]
            _, c, _, h, w = feats.shape
            chunks = feats.view(1, c, j1 - j0, TIME_COMPRESSION, h, w).transpose(1, 2)
            m = model.temporal_encoder(chunks.reshape(j1 - j0, c, TIME_COMPRESSION, h, w))
            if moments is None:
                moments = torch.empty(
                    (b, m.shape[1], k, *m.shape[-2:]), device=m.device, dtype=m.dtype
                )
            moments[bi, :, j0:j1] = m[:, :, 0].transpose(0, 1)
            del feats, chunks, m
    return moments


def decode_windows(model, z_BCKHW: torch.Tensor, window: int, windows_per_call: int | None):
    """Raw latents -> trunk features ``[B, C_feat, 8K, h, w]`` (padding frames included),
    decoding windows of ``window`` latents, ``windows_per_call`` full windows per call."""
    b, c, k, h, w = z_BCKHW.shape
    outs = []
    full = (k // window) * window
    step = full if windows_per_call is None else window * windows_per_call
    for s in range(0, full, max(window, step)):
        e = min(full, s + max(window, step))
        wins = z_BCKHW[:, :, s:e].reshape(b, c, (e - s) // window, window, h, w).transpose(1, 2)
        f = model.temporal_decoder(wins.reshape(-1, c, window, h, w))
        f = f.view(b, (e - s) // window, *f.shape[1:]).transpose(1, 2)
        outs.append(f.reshape(b, f.shape[1], -1, *f.shape[-2:]))
    if full < k:
        outs.append(model.temporal_decoder(z_BCKHW[:, :, full:]))
    return torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]


def decode_video(model, z_BCKHW: torch.Tensor, window: int) -> torch.Tensor:
    """Raw latents ``[B, latent, 1+k, h, w]`` -> video ``[B, 3, 1+8k, H, W]``: groups of
    decoder windows, their frames decoded in micro-batches straight into the output."""
    b, _, k, h, w = z_BCKHW.shape
    t = TIME_COMPRESSION * k - PAD
    height, width = h * SPATIAL_COMPRESSION, w * SPATIAL_COMPRESSION
    p = plan(
        model.config,
        model.runtime,
        height,
        width,
        z_BCKHW.element_size(),
        model.frame_batch_size,
        model.chunk_batch_size,
    )
    windows_per_group = None if p.chunk_batch is None else max(1, p.chunk_batch // window)
    group = k if windows_per_group is None else window * windows_per_group
    video = None
    for bi in range(b):
        for g0 in range(0, k, group):
            g1 = min(k, g0 + group)
            feats = decode_windows(model, z_BCKHW[bi : bi + 1, :, g0:g1], window, None)
            first = TIME_COMPRESSION * g0 - PAD  # video frame of feats' frame 0
            skip = PAD if g0 == 0 else 0
            for s, e in _frame_batches(skip, feats.shape[2], p.frame_batch):
                x_NCHW = model.trunk.decode(feats[0, :, s:e].transpose(0, 1))
                if video is None:
                    video = torch.empty(
                        (b, x_NCHW.shape[1], t, *x_NCHW.shape[-2:]),
                        device=x_NCHW.device,
                        dtype=x_NCHW.dtype,
                    )
                video[bi, :, first + s : first + e] = x_NCHW.transpose(0, 1)
            del feats
    return video
