"""Import the released MUG-V VAE weights (``vae.pt``) through an explicit name mapping.

The original checkpoint is a plain PyTorch state dict of ``MUGAutoencoderPipeline``
(Shopee-MUG/MUG-V, ``mug_v/encoder/vae/vae.py``) with three parts:

- ``spatial_vae.module.{encoder,decoder}.*``: a diffusers ``AutoencoderKL`` (SDXL VAE
  config, no quant convs) whose encoder stops after ``mid_block`` and whose decoder starts
  at ``mid_block``; maps to ``trunk.{encoder,decoder}.*`` with the same sub-names.
- ``temporal_vae.*``: the temporal VAE; every conv is wrapped (``X.conv.weight``), res-block
  shortcuts are ``conv3``; stage/block names are renamed as in ``_TEMPORAL_RULES``. The
  decoder's ``block_res_blocks`` are indexed shallow-first, ours run deepest-first.
- ``shift``/``scale`` ``[1, 24, 1, 1, 1]``: per-channel latent mean/std -> ``latent_mean``
  /``latent_std`` ``[24]``. ``logvar`` (a learned scalar of the training loss) is dropped.

Every key of the original must be consumed by exactly one rule and every key of our model
must be produced, otherwise ``ValueError`` lists the offenders.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch

from mugv_vae.config import VAEConfig, mugv_config

DROPPED_KEYS = re.compile(
    r"logvar|spatial_vae\.module\.(encoder\.conv_norm_out|encoder\.conv_out|decoder\.conv_in)\."
    r"(weight|bias)\Z"
)
"""Original keys with no counterpart: ``logvar`` (training-only) and the image VAE's own
4-channel bottleneck convs, which the original holds but never runs."""


def _temporal_rules(n_stages: int) -> list[tuple[re.Pattern[str], Callable[[re.Match], str]]]:
    def dec_stage(i: str) -> str:
        return str(n_stages - 1 - int(i))

    def dec_up(i: str) -> str:
        # conv_blocks[i] follows original stage i + 1 -> our stage n - 2 - i.
        return str(n_stages - 2 - int(i))

    res = r"(norm1|norm2|conv1\.conv|conv2\.conv|conv3\.conv)\.(weight|bias)"

    def block(sub: str) -> str:
        return sub.replace("conv3.conv", "shortcut.conv")

    rules: list[tuple[str, Callable[[re.Match], str]]] = [
        (
            r"temporal_vae\.encoder\.conv_in\.conv\.(weight|bias)",
            lambda m: f"temporal_encoder.conv_in.conv.{m[1]}",
        ),
        (
            rf"temporal_vae\.encoder\.block_res_blocks\.(\d+)\.(\d+)\.{res}",
            lambda m: f"temporal_encoder.stages.{m[1]}.blocks.{m[2]}.{block(m[3])}.{m[4]}",
        ),
        (
            r"temporal_vae\.encoder\.conv_blocks\.(\d+)\.conv\.(weight|bias)",
            lambda m: f"temporal_encoder.stages.{m[1]}.down.conv.{m[2]}",
        ),
        (
            rf"temporal_vae\.encoder\.res_blocks\.(\d+)\.{res}",
            lambda m: f"temporal_encoder.mid.{m[1]}.{block(m[2])}.{m[3]}",
        ),
        (
            r"temporal_vae\.encoder\.norm1\.(weight|bias)",
            lambda m: f"temporal_encoder.norm_out.{m[1]}",
        ),
        (
            r"temporal_vae\.encoder\.conv2\.conv\.(weight|bias)",
            lambda m: f"temporal_encoder.conv_out.conv.{m[1]}",
        ),
        (
            r"temporal_vae\.quant_conv\.conv\.(weight|bias)",
            lambda m: f"temporal_encoder.moments_proj.conv.{m[1]}",
        ),
        (
            r"temporal_vae\.post_quant_conv\.conv\.(weight|bias)",
            lambda m: f"temporal_decoder.latent_proj.conv.{m[1]}",
        ),
        (
            r"temporal_vae\.decoder\.conv1\.conv\.(weight|bias)",
            lambda m: f"temporal_decoder.conv_in.conv.{m[1]}",
        ),
        (
            rf"temporal_vae\.decoder\.res_blocks\.(\d+)\.{res}",
            lambda m: f"temporal_decoder.mid.{m[1]}.{block(m[2])}.{m[3]}",
        ),
        (
            rf"temporal_vae\.decoder\.upsample_block\.{res}",
            lambda m: f"temporal_decoder.mid_up.block.{block(m[1])}.{m[2]}",
        ),
        (
            rf"temporal_vae\.decoder\.block_res_blocks\.(\d+)\.(\d+)\.{res}",
            lambda m: (
                f"temporal_decoder.stages.{dec_stage(m[1])}.blocks.{m[2]}.{block(m[3])}.{m[4]}"
            ),
        ),
        (
            r"temporal_vae\.decoder\.conv_blocks\.(\d+)\.conv\.(weight|bias)",
            lambda m: f"temporal_decoder.stages.{dec_up(m[1])}.up.proj.conv.{m[2]}",
        ),
        (
            r"temporal_vae\.decoder\.norm1\.(weight|bias)",
            lambda m: f"temporal_decoder.norm_out.{m[1]}",
        ),
        (
            r"temporal_vae\.decoder\.conv_out\.conv\.(weight|bias)",
            lambda m: f"temporal_decoder.conv_out.conv.{m[1]}",
        ),
        (r"spatial_vae\.module\.encoder\.(.+)", lambda m: f"trunk.encoder.{m[1]}"),
        (r"spatial_vae\.module\.decoder\.(.+)", lambda m: f"trunk.decoder.{m[1]}"),
        (r"shift", lambda m: "latent_mean"),
        (r"scale", lambda m: "latent_std"),
    ]
    return [(re.compile(p + r"\Z"), f) for p, f in rules]


def map_original_key(key: str, n_stages: int = 4) -> str | None:
    """Our parameter name for an original key; None for a dropped key; ValueError if unknown."""
    if DROPPED_KEYS.match(key):
        return None
    for pattern, target in _temporal_rules(n_stages):
        m = pattern.match(key)
        if m:
            return target(m)
    raise ValueError(f"original VAE key {key!r} matches no mapping rule")


def convert_original_state_dict(
    original: dict[str, torch.Tensor], config: VAEConfig, expected: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename (and reshape the latent stats of) an original state dict into ours.

    ``expected`` is our model's ``state_dict()`` (names and shapes to check against).
    """
    n_stages = len(config.temporal.channel_multipliers)
    out: dict[str, torch.Tensor] = {}
    for key, value in original.items():
        new = map_original_key(key, n_stages)
        if new is None:
            continue
        if new in ("latent_mean", "latent_std"):
            value = value.reshape(-1)
        if new not in expected:
            raise ValueError(f"original key {key!r} maps to {new!r}, which our model lacks")
        if new in out:
            raise ValueError(f"two original keys map to {new!r}")
        if tuple(value.shape) != tuple(expected[new].shape):
            raise ValueError(
                f"original key {key!r} has shape {tuple(value.shape)}, our {new!r} needs "
                f"{tuple(expected[new].shape)}"
            )
        out[new] = value
    missing = sorted(set(expected) - set(out))
    if missing:
        raise ValueError(
            f"original state dict lacks {len(missing)} of our keys, e.g. {missing[:5]}"
        )
    return out


def import_original(path: str | Path, config: VAEConfig | None = None):
    """Load the original ``vae.pt`` (``weights_only=True``) into a new ``MUGVAE``."""
    from mugv_vae.model import MUGVAE

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"original VAE state dict {path} does not exist")
    original = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(original, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(original).__name__})")
    if "state_dict" in original and isinstance(original["state_dict"], dict):
        original = original["state_dict"]
    config = config or mugv_config()
    model = MUGVAE(config)
    model.load_state_dict(convert_original_state_dict(original, config, model.state_dict()))
    return model
