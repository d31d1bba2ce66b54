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


def latent_header(
    *,
    vae,
    vae_checkpoint_id: str,
    latent_channels: int,
    text_encoder_id: str | None,
    text_dim: int | None,
    config: dict | None = None,
):
    """The ``dataset.json`` header of generated latents (normalised, the VAE's statistics)."""
    return mf.LatentShardWriter.make_header(
        producer=f"mugv-infer {__version__}",
        config=config or {},
        vae_checkpoint_id=vae_checkpoint_id,
        latent_channels=int(latent_channels),
        latent_mean=[float(v) for v in vae.latent_mean.float().cpu()],
        latent_std=[float(v) for v in vae.latent_std.float().cpu()],
        latents_normalized=True,
        text_encoder_id=text_encoder_id,
        text_dim=text_dim,
    )


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
    append: bool = False,
) -> Path:
    """Write one sample per generated video; returns ``out_dir``. ``append``: add them to
    the complete dataset at ``out_dir`` (its header kept; it must fit, see
    :func:`mugv_infer.outputs.check_append_header`; energon's index is rebuilt when
    megatron-energon is installed)."""
    b = latents_BCTHW.shape[0]
    if len(prompts) != b:
        raise ValueError(f"{len(prompts)} prompts for {b} generated latents")
    text_dim = None if prompt_embeds is None else int(prompt_embeds.shape[-1])
    header = latent_header(
        vae=vae,
        vae_checkpoint_id=vae_checkpoint_id,
        latent_channels=int(latents_BCTHW.shape[1]),
        text_encoder_id=text_encoder_id,
        text_dim=text_dim,
        config=config,
    )
    out_dir = Path(out_dir)
    energon: bool | None = False
    if append:
        from mugv_infer.outputs import check_append_header

        header = check_append_header(out_dir, header)
        energon = None
    with mf.LatentShardWriter(out_dir, header, energon=energon) as writer:
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
