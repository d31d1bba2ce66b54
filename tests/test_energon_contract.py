"""Latent shards written by mugv-formats load through Megatron's own multimodal loader,
megatron-energon, and give back the same arrays as mugv-formats' reader."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from megatron.energon import (
    Cooker,
    DefaultTaskEncoder,
    Sample,
    WorkerConfig,
    basic_sample_keys,
    get_loader,
    get_val_dataset,
    stateless,
)
from mugv_formats import LatentDataset, LatentRecord, LatentShardWriter


@dataclass
class LatentTestSample(Sample):
    latents: torch.Tensor
    text: torch.Tensor
    record: dict


@stateless
def cook(raw: dict) -> LatentTestSample:
    return LatentTestSample(
        **basic_sample_keys(raw),
        latents=torch.as_tensor(raw["latents.npy"]),
        text=torch.as_tensor(raw["text.npy"]),
        record=raw["json"],
    )


class Encoder(DefaultTaskEncoder):
    cookers = (Cooker(cook),)


def test_latent_shards_load_through_energon(tmp_path: Path) -> None:
    header = LatentShardWriter.make_header(
        producer="t",
        vae_checkpoint_id="v",
        latent_channels=4,
        latent_mean=[0] * 4,
        latent_std=[1] * 4,
        text_dim=6,
    )
    rng = np.random.default_rng(1)
    with LatentShardWriter(tmp_path, header, samples_per_shard=3, energon=True) as w:
        for i in range(7):
            w.write(
                LatentRecord(key=f"k{i}", fps=24, num_frames=9, height=16, width=16),
                rng.standard_normal((4, 2, 2, 2)).astype(np.float32),
                rng.standard_normal((i + 1, 6)).astype(np.float16),
            )
    ours = {s.record.key: s for s in LatentDataset(tmp_path)}
    ds = get_val_dataset(
        str(tmp_path),
        split_part="train",
        batch_size=None,
        worker_config=WorkerConfig(rank=0, world_size=1, num_workers=0),
        task_encoder=Encoder(),
    )
    seen = {}
    for sample in get_loader(ds):
        rec = LatentRecord.model_validate(sample.record)
        seen[rec.key] = sample
        np.testing.assert_array_equal(sample.latents.numpy(), ours[rec.key].latents)
        np.testing.assert_array_equal(sample.text.numpy(), ours[rec.key].text)
        if len(seen) == len(ours):
            break
    assert set(seen) == set(ours)
