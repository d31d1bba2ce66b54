"""Generated samples as latent shards (mugv-formats ``mugv.latent-shards``), so they can feed
preference data (mugv-align) like encoded clips do.

Latents are the pipeline's normalised latents (the VAE's ``encode`` space), so the header says
``latents_normalized=True`` with the VAE's statistics; text features are the real (unmasked)
tokens of each prompt.
"""

from __future__ import annotations

from pathlib import Path

import mugv_formats as mf
import numpy as np
import torch

from mugv_infer import __version__


def write_latent_shards(
    out_dir: str | Path,
    latents_BCTHW: torch.Tensor,
    *,
    vae,
    vae_checkpoint_id: str,
    prompts: list[str],
    prompt_embeds: torch.Tensor | None = None,
    prompt_attention_mask: torch.Tensor | None = None,
    fps: float,
    num_frames: int,
    height: int,
    width: int,
    text_encoder_id: str | None = None,
    key_prefix: str = "gen",
    extra: dict | None = None,
    config: dict | None = None,
) -> Path:
    """Write one sample per generated video; returns ``out_dir``."""
    b = latents_BCTHW.shape[0]
    if len(prompts) != b:
        raise ValueError(f"{len(prompts)} prompts for {b} generated latents")
    text_dim = None if prompt_embeds is None else int(prompt_embeds.shape[-1])
    header = mf.LatentShardWriter.make_header(
        producer=f"mugv-infer {__version__}",
        config=config or {},
        vae_checkpoint_id=vae_checkpoint_id,
        latent_channels=int(latents_BCTHW.shape[1]),
        latent_mean=[float(v) for v in vae.latent_mean.float().cpu()],
        latent_std=[float(v) for v in vae.latent_std.float().cpu()],
        latents_normalized=True,
        text_encoder_id=text_encoder_id,
        text_dim=text_dim,
    )
    out_dir = Path(out_dir)
    with mf.LatentShardWriter(out_dir, header, energon=False) as writer:
        for i in range(b):
            text = None
            if prompt_embeds is not None:
                tokens = prompt_embeds[i]
                if prompt_attention_mask is not None:
                    tokens = tokens[prompt_attention_mask[i].bool()]
                text = tokens.float().cpu().numpy().astype(np.float32)
            record = mf.LatentRecord(
                key=f"{key_prefix}{i:06d}",
                caption=prompts[i],
                fps=float(fps),
                num_frames=num_frames,
                height=height,
                width=width,
                extra=extra or {},
            )
            writer.write(record, latents_BCTHW[i].float().cpu().numpy(), text)
    return out_dir
