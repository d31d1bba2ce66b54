"""``mugv-vae stats``: measure per-channel latent mean/std on data (and store them).

Statistics are over raw (un-normalised) posterior means of every latent position of up to
``max_clips`` clips, accumulated in float64. ``write=True`` stores them into the checkpoint
(a new folder content, so a new checkpoint id; its other ``extra`` entries are kept); they
are then applied exactly once by ``MUGVAE.encode``/``decode``.
"""

from __future__ import annotations

import torch

from mugv_vae.video import parse_resolution

_STATS_KEYS = ("latent_mean", "latent_std", "latent_stats")


def measure_latent_stats(
    checkpoint: str,
    clips: str,
    resolution: str = "256x256",
    frames: int = 17,
    device: str = "cpu",
    max_clips: int = 256,
    write: bool = False,
) -> dict:
    from mugv_vae.checkpoint import checkpoint_id
    from mugv_vae.model import MUGVAE
    from mugv_vae.train.data import ClipSource

    model = MUGVAE.from_pretrained(checkpoint, device=device)
    source = ClipSource(clips)
    size = parse_resolution(resolution)
    c = model.config.latent_channels
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    count = 0
    n = min(max_clips, len(source))
    for i in range(n):
        x = source.load(i, frames, [size]).unsqueeze(0)
        with torch.no_grad():
            z = model.encode_raw(x.to(device)).double().cpu()
        z = z.transpose(0, 1).reshape(c, -1)
        total += z.sum(dim=1)
        total_sq += z.pow(2).sum(dim=1)
        count += z.shape[1]
    mean = total / count
    std = (total_sq / count - mean.pow(2)).clamp_min(1e-12).sqrt()
    result = {"clips": n, "positions": count, "mean": mean.tolist(), "std": std.tolist()}
    if write:
        from mugv_formats import VAE_CHECKPOINT_FORMAT, read_weights_config

        # the checkpoint's own extra entries (a trainer's train_step) stay; the stats replace
        # the old ones
        meta = read_weights_config(checkpoint, format=VAE_CHECKPOINT_FORMAT)
        kept = {k: v for k, v in (meta.get("extra") or {}).items() if k not in _STATS_KEYS}
        model.set_latent_stats(mean.float(), std.float())
        stats = {"latent_stats": {"clips": clips, "clips_used": n}}
        model.save_pretrained(checkpoint, extra={**kept, **stats})
        result["checkpoint_id"] = checkpoint_id(checkpoint)
    return result
