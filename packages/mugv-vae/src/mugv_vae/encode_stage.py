"""Encode stage: clip shards (``mugv.clip-shards``) -> latent shards (``mugv.latent-shards``).

Work is split by whole input shards. Each input shard becomes one complete single-shard
latent dataset under ``<output>.parts/<shard>/`` (its ``dataset.json`` marks it done, so a
rerun skips it: resumable). When every part exists, rank 0 merges the parts, in input-shard
order, into ``<output>`` (written under a temporary name and renamed). Under ``torchrun`` each
rank takes shards ``rank, rank + world, ...`` on its own GPU.

Parts are reused only by a run with the same settings: ``<output>.parts`` carries the ownership
marker of :func:`mugv_formats.outputs.claim_output` with :func:`encode_fingerprint` (checkpoint
id, input dataset, buckets, frames, mode, seed, dtypes, tile), and each part's header config is
checked against it; a rerun with other settings is refused (``--overwrite``: start over).
The output is claimed the same way (a complete latent dataset is replaced only with
``--overwrite``; an output that is, holds or sits in the input is refused) and locked for the
run (:func:`mugv_formats.outputs.output_lock`).

Stored latents are normalised once, by the VAE (``latents_normalized = true``), with the
checkpoint's statistics in the dataset header.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Literal

import mugv_formats as mf
import numpy as np
import torch
from mugv_formats.outputs import claim_output, marker_kind, output_lock
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tqdm import tqdm

from mugv_vae.config import VAERuntime
from mugv_vae.distributed import barrier, init_distributed
from mugv_vae.video import load_clip, parse_resolution


class EncodeConfig(BaseModel):
    """Settings of one ``mugv-vae encode`` run (written into the output's header)."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str = Field(description="VAE checkpoint folder.")
    input: str = Field(description="Clip-shard dataset to read.")
    output: str = Field(description="Latent-shard dataset to write.")
    resolutions: list[str] = Field(
        default_factory=lambda: ["256x256"],
        description="Resolution buckets HxW; each clip goes to the closest aspect ratio.",
    )
    frames: int = Field(33, ge=1, description="Frames per clip (cut to the largest 1+8k).")
    mode: Literal["mode", "sample"] = Field(
        "mode", description="Store the posterior mean ('mode') or a sample ('sample')."
    )
    seed: int = Field(0, ge=0, description="Seed for 'sample' mode (per clip: seed + clip index).")
    device: str = Field("cuda" if torch.cuda.is_available() else "cpu")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="Compute dtype.")
    latent_dtype: Literal["float32", "float16"] = Field("float32", description="Stored dtype.")
    samples_per_shard: int = Field(64, ge=1)
    tile: int | None = Field(None, ge=8, description="Spatial tile (pixels) for bounded memory.")
    frame_batch_size: int | None = Field(
        16, ge=1, description="Frames per trunk call (None: chosen from max_activation_bytes)."
    )
    fast: bool = Field(
        False,
        description="CUDA fast inference: channels-last, the NHWC Triton kernels and folded "
        "up-sampling (VAERuntime fields), cudnn.benchmark. Same maths.",
    )
    max_activation_bytes: int | None = Field(
        None, ge=1, description="Activation memory budget (see VAERuntime)."
    )
    keep_parts: bool = Field(False, description="Keep <output>.parts after the merge.")
    overwrite: bool = Field(
        False,
        description="Replace a complete latent dataset at output (only that; anything else "
        "there is refused), or start over from interrupted parts made with other settings.",
    )

    @field_validator("resolutions")
    @classmethod
    def _res(cls, v: list[str]) -> list[str]:
        for r in v:
            parse_resolution(r)
        if not v:
            raise ValueError("at least one resolution bucket is needed")
        return v


FAST_RUNTIME = {
    "channels_last": True,
    "fused_group_norm_silu": True,
    "fused_nhwc_ops": True,
    "fold_upsample_conv": True,
}
"""``VAERuntime`` fields of ``--fast`` (the benchmark's ``ours-fast``)."""


#: EncodeConfig fields that shape the stored latents (with the checkpoint id and the input).
SHAPING_FIELDS = ("resolutions", "frames", "mode", "seed", "dtype", "latent_dtype", "tile")
PARTS_KIND = "mugv.vae-encode-parts"


def encode_fingerprint(cfg: EncodeConfig, vae_checkpoint_id: str) -> dict:
    """Every setting that shapes the latents: a part is reused only under the same ones."""
    head = Path(cfg.input) / "dataset.json"
    return {
        "vae_checkpoint_id": vae_checkpoint_id,
        "input": os.path.realpath(cfg.input),
        "input_header_sha256": hashlib.sha256(head.read_bytes()).hexdigest(),
        **{k: v for k, v in cfg.model_dump(mode="json").items() if k in SHAPING_FIELDS},
    }


def _check_part(part_dir: Path, fingerprint: dict) -> None:
    """A finished part must have been made with this run's settings."""
    config = mf.LatentDataset(part_dir).header.config
    made = config.get("fingerprint")
    if made != fingerprint:
        diff = sorted(k for k in fingerprint if (made or {}).get(k) != fingerprint[k])
        raise ValueError(
            f"{part_dir / 'dataset.json'}: part made with other settings ({', '.join(diff)}); "
            "rerun with the same settings, or pass --overwrite to start over"
        )


def _parts_dir(cfg: EncodeConfig, parts: Path, fingerprint: dict, rank: int, world: int):
    """Claim ``<output>.parts`` (rank 0; the others follow what rank 0 made of it)."""
    if rank == 0:
        claim = claim_output(
            parts,
            PARTS_KIND,
            overwrite=cfg.overwrite,
            inputs=[cfg.input, cfg.checkpoint],
            settings=fingerprint,
            what="encode parts folder",
        )
        return claim.write_path, claim.path
    barrier(world)
    staging = parts.with_name(f".{parts.name}.mugv-new")
    if marker_kind(staging) == (PARTS_KIND, fingerprint):
        return staging, parts
    return parts, parts


def _encode_shard(cfg: EncodeConfig, vae, dataset, shard: str, part_dir: Path, header_kw, device):
    buckets = [parse_resolution(r) for r in cfg.resolutions]
    header = mf.LatentShardWriter.make_header(**header_kw)
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
    if part_dir.exists():
        shutil.rmtree(part_dir)  # an unfinished part: start it again
    part_dir.mkdir(parents=True)
    count = 0
    with mf.LatentShardWriter(part_dir, header, samples_per_shard=1 << 30, energon=False) as writer:
        for index, (record, mp4) in enumerate(dataset.iter_clips(shard)):
            video = load_clip(
                mp4, cfg.frames, buckets, where=f"{dataset.path}/{shard}:{record.key}"
            )
            x = video.unsqueeze(0).to(device)
            gen = None
            if cfg.mode == "sample":
                gen = torch.Generator(device=device).manual_seed(cfg.seed + index)
            with (
                torch.no_grad(),
                torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32),
            ):
                z = vae.encode(x, sample=cfg.mode == "sample", generator=gen, tile=cfg.tile)
            latents = z[0].float().cpu().numpy().astype(cfg.latent_dtype)
            writer.write(
                mf.LatentRecord(
                    key=record.key,
                    clip_key=record.key,
                    caption=record.caption,
                    fps=record.fps,
                    num_frames=video.shape[1],
                    height=video.shape[2],
                    width=video.shape[3],
                    sample_weight=record.sample_weight,
                    extra={"source": record.source, "source_shard": shard},
                ),
                latents,
            )
            count += 1
    return count


def run_encode(cfg: EncodeConfig) -> dict:
    """Run the encode stage; returns a summary (also printed by the CLI)."""
    from mugv_vae.checkpoint import checkpoint_id

    rank, world, local_rank = init_distributed()
    device = torch.device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
    dataset = mf.ClipDataset(cfg.input)
    if len(dataset) == 0:
        raise ValueError(
            f"{cfg.input}: the clip dataset holds no clips (its curation kept none; see its "
            "rejects.parquet); nothing to encode"
        )
    shards = list(dataset.header.shards)
    output = Path(cfg.output)
    ckpt_id = checkpoint_id(cfg.checkpoint)
    fingerprint = encode_fingerprint(cfg, ckpt_id)
    inputs = [cfg.input, cfg.checkpoint]
    out_claim = None
    if rank == 0:  # checked before any work; the output is written by the merge at the end
        out_claim = claim_output(
            output,
            mf.LATENT_SHARDS_FORMAT,
            overwrite=cfg.overwrite,
            inputs=inputs,
            settings=fingerprint,
            what="--output",
        )
    with contextlib.ExitStack() as stack:
        if rank == 0:
            stack.enter_context(output_lock(output, "--output"))
        parts, parts_final = _parts_dir(cfg, Path(f"{output}.parts"), fingerprint, rank, world)
        if rank == 0:
            barrier(world)
        return _run(
            cfg,
            dataset,
            shards,
            output,
            out_claim,
            parts,
            parts_final,
            fingerprint,
            ckpt_id,
            rank,
            world,
            device,
        )


def _run(
    cfg,
    dataset,
    shards,
    output,
    out_claim,
    parts,
    parts_final,
    fingerprint,
    ckpt_id,
    rank,
    world,
    device,
) -> dict:
    from mugv_vae import __version__
    from mugv_vae.model import MUGVAE

    runtime = {"max_activation_bytes": cfg.max_activation_bytes}
    if cfg.fast and device.type == "cuda":
        runtime.update(FAST_RUNTIME)
        torch.backends.cudnn.benchmark = True
    vae = MUGVAE.from_pretrained(cfg.checkpoint, device=device, runtime=VAERuntime(**runtime))
    vae.frame_batch_size = cfg.frame_batch_size
    header_kw = dict(
        producer=f"mugv-vae {__version__}",
        config={**cfg.model_dump(mode="json"), "fingerprint": fingerprint},
        vae_checkpoint_id=ckpt_id,
        latent_channels=vae.config.latent_channels,
        latent_mean=vae.latent_mean.tolist(),
        latent_std=vae.latent_std.tolist(),
        latents_normalized=True,
    )
    mine = shards[rank::world]
    todo = []
    for s in mine:
        part = parts / Path(s).stem
        if (part / "dataset.json").is_file():
            _check_part(part, fingerprint)
        else:
            todo.append(s)
    start, encoded = time.perf_counter(), 0
    for shard in tqdm(todo, desc=f"encode rank {rank}", disable=rank != 0):
        part = parts / Path(shard).stem
        encoded += _encode_shard(cfg, vae, dataset, shard, part, header_kw, device)
    barrier(world)
    summary = {
        "shards": len(shards),
        "skipped_shards": len(mine) - len(todo),
        "encoded_clips_rank0": encoded,
        "seconds": round(time.perf_counter() - start, 3),
        "output": str(output),
    }
    if rank == 0:
        summary["samples"] = _merge(cfg, shards, parts, out_claim.write_path, header_kw)
        out_claim.commit()
        if parts != parts_final and marker_kind(parts_final) is not None:
            shutil.rmtree(parts_final)  # the interrupted parts of other settings (ours)
        if cfg.keep_parts:
            if parts != parts_final:
                os.replace(parts, parts_final)
        else:
            shutil.rmtree(parts)
    barrier(world)
    return summary


_OWN_HEADER_FIELDS = {"format", "version", "producer", "created", "config", "shards"}


def _merge(cfg: EncodeConfig, shards: list[str], parts: Path, output: Path, header_kw) -> int:
    """Merge the parts, in input-shard order; the output's header is derived from theirs
    (``derive_header``), and a part made by another run (another checkpoint, statistics, ...)
    is refused by name: a kept part is reused only when it is what this run would write."""
    expected = mf.LatentShardWriter.make_header(**header_kw)
    want = expected.model_dump(mode="json", exclude=_OWN_HEADER_FIELDS)
    datasets = [mf.LatentDataset(parts / Path(shard).stem) for shard in shards]
    for part in datasets:
        got = part.header.model_dump(mode="json", exclude=_OWN_HEADER_FIELDS)
        for field in want:
            if got.get(field) != want[field]:
                raise ValueError(
                    f"{part.path / 'dataset.json'}: {field} is {got.get(field)!r}, this run "
                    f"writes {want[field]!r}; the part was made by another encode run: delete "
                    f"{parts} to encode again"
                )
    header = expected
    if datasets:
        header = mf.derive_header(
            datasets[0].header, producer=expected.producer, config=expected.config
        )
    n = 0
    with mf.atomic_replace_dir(output) as tmp:
        with mf.LatentShardWriter(tmp, header, samples_per_shard=cfg.samples_per_shard) as writer:
            for part in datasets:
                for sample in part:
                    writer.write(
                        sample.record.for_rewrite(), np.asarray(sample.latents), sample.text
                    )
                    n += 1
        (tmp / "encode_config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=2))
    return n
