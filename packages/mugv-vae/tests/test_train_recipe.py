"""Training recipe knobs: the cosine learning-rate schedule against its closed form, and
architecture fields over a preset (``model.architecture``)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from mugv_vae.config import tiny_config
from mugv_vae.train.config import load_train_config
from mugv_vae.train.trainer import Trainer


def _trainer(tmp_path, clip_dir, *overrides):
    cfg = load_train_config(
        None,
        [f"output={tmp_path}", f"data.clips={clip_dir}", "loss.perceptual=0", *overrides],
    )
    return Trainer(cfg)


def test_cosine_schedule_is_warmup_then_the_closed_form(tmp_path, clip_dir):
    lr, low, warm, steps = 1e-2, 1e-4, 3, 11
    t = _trainer(tmp_path / "a", clip_dir, f"steps={steps}", f"optim.lr={lr}",
                 f"optim.warmup_steps={warm}", "optim.lr_decay=cosine", f"optim.min_lr={low}")  # fmt: skip
    for s in range(steps):
        if s < warm:
            expected = lr * (s + 1) / warm
        else:  # half a cosine period from lr at the end of warm-up to low at the last step
            expected = (
                low + (lr - low) * (1 + math.cos(math.pi * (s - warm) / (steps - 1 - warm))) / 2
            )
        assert t._lr(s) == pytest.approx(expected, rel=1e-12), s
    assert t._lr(warm) == pytest.approx(lr) and t._lr(steps - 1) == pytest.approx(low)
    const = _trainer(tmp_path / "b", clip_dir, "steps=11", f"optim.lr={lr}", "optim.warmup_steps=2")
    assert [const._lr(s) for s in (0, 1, 2, 10)] == pytest.approx([lr / 2, lr, lr, lr])


def test_architecture_fields_over_the_preset(tmp_path, clip_dir):
    t = _trainer(tmp_path / "a", clip_dir,
                 "model.architecture={temporal: {filters: 16, num_groups: 8}}")  # fmt: skip
    cfg, tiny = t.model.config, tiny_config()
    assert (cfg.temporal.filters, cfg.temporal.num_groups) == (16, 8)
    # the preset's other fields stay: the rest of the temporal section and the trunk
    assert cfg.temporal.channel_multipliers == tiny.temporal.channel_multipliers
    assert cfg.trunk == tiny.trunk and cfg.latent_channels == tiny.latent_channels
    widths = {
        m.out_channels for m in t.model.temporal_encoder.modules() if hasattr(m, "out_channels")
    }
    assert 16 in widths and 32 in widths  # filters x multipliers (1, 2, 2, 2)
    with pytest.raises(ValueError, match="num_groups"):
        _trainer(tmp_path / "b", clip_dir, "model.architecture={temporal: {filters: 6}}")
    with pytest.raises(ValueError, match="filterz"):
        _trainer(tmp_path / "c", clip_dir, "model.architecture={temporal: {filterz: 6}}")


def test_cached_decoding_gives_the_same_batches_and_decodes_each_clip_once(
    tmp_path, clip_dataset, monkeypatch
):
    from mugv_vae.train import data as D

    calls = []
    decode = D.decode_video

    def counting(data, max_frames=None, where="video"):
        calls.append(where)
        return decode(data, max_frames=max_frames, where=where)

    monkeypatch.setattr(D, "decode_video", counting)
    common = ("data.resolution=32x32", "data.frames=9", "data.batch_size=2", "steps=4")
    plain = _trainer(tmp_path / "a", clip_dataset, *common).batches
    cached = _trainer(tmp_path / "b", clip_dataset, *common, "data.cache_decoded=true").batches
    calls.clear()
    want = [plain[s] for s in range(4)]
    assert len(calls) == 8  # one decode per sample without the cache
    calls.clear()
    got = [cached[s] for s in range(4)]
    assert len(calls) == len(set(calls)) <= 3  # each clip once
    for a, b in zip(want, got, strict=True):
        assert torch.equal(a["video"], b["video"]) and a["window"] == b["window"]


def test_max_offset_zero_takes_every_video_sample_from_the_first_frame(tmp_path, clip_dataset):
    from mugv_vae.train.data import ClipSource
    from mugv_vae.video import to_model_input

    t = _trainer(tmp_path, clip_dataset, "data.resolution=32x32", "data.frames=9",
                 "data.batch_size=1", "data.image_ratio=0", "data.max_offset=0", "steps=4")  # fmt: skip
    firsts = {}
    src = ClipSource(clip_dataset)
    for i in range(len(src)):  # independent: the clip's first 9 frames, resized
        firsts[i] = to_model_input(src.frames(i, 9), (32, 32))
    for s in range(4):
        video = t.batches[s]["video"][0]
        assert any(torch.equal(video, f) for f in firsts.values()), s
    # the default starts at random frames: some sample is not a clip's beginning
    d = _trainer(tmp_path / "d", clip_dataset, "data.resolution=32x32", "data.frames=9",
                 "data.batch_size=1", "data.image_ratio=0", "steps=8")  # fmt: skip
    assert not all(
        any(torch.equal(d.batches[s]["video"][0], f) for f in firsts.values()) for s in range(8)
    )


def test_distinct_clips_fill_a_batch_without_repeats(tmp_path, clip_dataset):
    from mugv_vae.train.data import ClipSource
    from mugv_vae.video import to_model_input

    src = ClipSource(clip_dataset)
    firsts = [to_model_input(src.frames(i, 9), (32, 32)) for i in range(len(src))]
    t = _trainer(tmp_path, clip_dataset, "data.resolution=32x32", "data.frames=9",
                 f"data.batch_size={len(src)}", "data.image_ratio=0", "data.max_offset=0",
                 "data.distinct_clips=true", "data.cache_decoded=true", "steps=3")  # fmt: skip
    for s in range(3):  # every clip once per batch, from its first frame
        video = t.batches[s]["video"]
        which = sorted(next(i for i, f in enumerate(firsts) if torch.equal(v, f)) for v in video)
        assert which == list(range(len(src))), s


def test_sample_posterior_false_decodes_the_posterior_mean(tmp_path, clip_dataset):
    common = ("data.resolution=32x32", "data.frames=9", "data.batch_size=1", "steps=2",
              "data.image_ratio=0", "loss.l1=0", "loss.kl=0")  # fmt: skip
    for sample in (False, True):
        t = _trainer(tmp_path / str(sample), clip_dataset, *common,
                     f"loss.sample_posterior={str(sample).lower()}")  # fmt: skip
        batch = t.batches[0]
        with torch.no_grad():  # the reference: the mean through the same weights, float64 MSE
            m = t.model
            mean = m.encode_posterior(batch["video"]).mode()
            ref = m.decode_raw(mean, batch["window"]).double() - batch["video"].double()
            ref = ref.pow(2).mean().item()
        logged = t.train_step(batch)["mse"]
        if sample:
            assert logged != pytest.approx(ref, rel=1e-4)
        else:
            assert logged == pytest.approx(ref, rel=1e-4)


def test_latent_stats_are_measured_into_the_final_checkpoint_only(tmp_path, clip_dataset):
    import json

    from mugv_formats import VAE_CHECKPOINT_FORMAT, read_weights_config
    from mugv_vae.model import MUGVAE
    from mugv_vae.train.data import ClipSource

    t = _trainer(tmp_path, clip_dataset, "data.resolution=16x16", "data.frames=9",
                 "data.batch_size=1", "data.image_ratio=0", "steps=2", "checkpoint_every=1",
                 "keep_checkpoints=0", "log_every=1", "image_every=0",
                 "latent_stats={resolution: 16x16, frames: 9}")  # fmt: skip
    final = Path(t.run()["checkpoint"])
    first = sorted(p for p in final.parent.iterdir() if p != final)[-1]
    # an intermediate checkpoint keeps mean 0 / std 1
    mid = MUGVAE.from_pretrained(first / "vae")
    assert mid.latent_mean.abs().max() == 0 and (mid.latent_std == 1).all()
    model = MUGVAE.from_pretrained(final / "vae")
    assert not (model.latent_std == 1).all()
    meta = read_weights_config(final / "vae", format=VAE_CHECKPOINT_FORMAT)
    assert meta["extra"]["train_step"] == 2 and meta["extra"]["latent_stats"]["clips_used"] == 3
    # the reference: the normalised latents of every clip are per channel mean 0 / std 1
    source = ClipSource(str(clip_dataset))
    with torch.no_grad():
        z = torch.cat([model.encode(source.load(i, 9, [(16, 16)]).unsqueeze(0)).double()
                       .transpose(0, 1).reshape(model.config.latent_channels, -1)
                       for i in range(len(source))], dim=1)  # fmt: skip
    torch.testing.assert_close(z.mean(dim=1), torch.zeros_like(z[:, 0]), atol=1e-4, rtol=0)
    std = z.std(dim=1, unbiased=False)
    torch.testing.assert_close(std, torch.ones_like(std), atol=1e-4, rtol=0)
    stats = json.loads((final / "latent_stats.json").read_text())
    assert stats["positions"] == z.shape[1] == 3 * 2 * 2 * 2


def test_cached_clips_give_the_same_batches_resizing_each_sample_once(
    tmp_path, clip_dataset, monkeypatch
):
    """cache_decoded also keeps each distinct sample's model input (clip, image step, first
    frame): the batches are exactly those of an uncached source, and the resize runs once a
    sample instead of once a step (issue 25: a fifth of the demo VAE's CPU step)."""
    import mugv_vae.train.data as data
    from mugv_vae.train.data import ClipSource, StepBatches

    calls = []
    resize = data.to_model_input
    monkeypatch.setattr(data, "to_model_input", lambda *a: calls.append(1) or resize(*a))

    def batches(cache: bool) -> StepBatches:  # image and video steps, random offsets
        return StepBatches(ClipSource(clip_dataset, cache_decoded=cache), "32x32", 9, 2,
                           image_ratio=0.3, windows=[1, 2], seed=5, rank=0, steps=12,
                           max_offset=2)  # fmt: skip

    plain, cached = batches(False), batches(True)
    for step in range(12):
        a, b = plain[step], cached[step]
        assert torch.equal(a["video"], b["video"]), step
        assert (a["window"], a["is_image"]) == (b["window"], b["is_image"]), step
    samples = len(cached._inputs)
    assert len(calls) == 12 * 2 + samples and samples < 12 * 2  # uncached: every step
    again = cached[3]["video"]
    again.add_(1.0)  # a batch is a copy: changing it leaves the cache as it was
    assert torch.equal(cached[3]["video"], plain[3]["video"])
