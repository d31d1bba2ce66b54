"""Bucketed, token-budget step plans over latent shards and their savable state."""

from __future__ import annotations

import math

import pytest
from mugv_dit.config import StageConfig
from mugv_dit.data.plan import BucketSampler, LatentIndex, collate, tokens_of
from mugv_dit.trainer import stage_at, stage_lr
from mugv_dit_fixtures import make_latent_dataset


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return LatentIndex(make_latent_dataset(tmp_path_factory.mktemp("d") / "ds"))


def _sampler(index, **kw):
    args = dict(
        tokens_per_batch=40, max_batch_size=8, micro_batches_per_step=4, patch=(1, 2, 2), seed=5
    )
    return BucketSampler(index, **{**args, **kw})


def test_plans_are_single_bucket_and_token_budgeted(index):
    sampler = _sampler(index)
    stage = StageConfig(name="s", steps=50)
    for step in range(20):
        plan = sampler.plan(step, stage, 0.0)
        assert len(plan.micro_batches) == 4
        per = tokens_of(plan.bucket, (1, 2, 2))
        assert {len(mb) for mb in plan.micro_batches} == {max(1, min(8, 40 // per))}
        for mb in plan.micro_batches:  # every DP rank gets the same shape and token count
            assert {index.bucket_of(i) for i in mb} == {plan.bucket}
        batch = collate([index.load(i) for i in plan.micro_batches[0]])
        assert tuple(batch.latents_BCTHW.shape[2:]) == plan.bucket[:3]


def test_epochs_cover_each_bucket_without_repeats(index):
    sampler = _sampler(index, micro_batches_per_step=1, tokens_per_batch=1)  # batch size 1
    bucket_id = sampler.buckets.index((3, 4, 4, 32, 32))
    pool = sampler.members[sampler.buckets[bucket_id]]
    drawn = sampler._draw(bucket_id, pool, len(pool))
    assert sorted(drawn) == sorted(pool)


def test_image_share_and_stage_filters(index):
    sampler = _sampler(index)
    only_images = StageConfig(name="i", steps=10, image_share_start=1.0, image_share_end=1.0)
    assert all(sampler.plan(s, only_images, 0.5).bucket[0] == 1 for s in range(10))
    no_images = StageConfig(name="v", steps=10, image_share_start=0.0)
    assert all(sampler.plan(s, no_images, 0.5).bucket[0] > 1 for s in range(10))
    long_only = StageConfig(name="l", steps=10, min_frames=33)
    assert all(sampler.plan(s, long_only, 0.0).bucket[0] == 5 for s in range(5))
    impossible = StageConfig(name="x", steps=1, min_frames=1000)
    with pytest.raises(ValueError, match="stage 'x' accepts no sample"):
        sampler.plan(0, impossible, 0.0)


def test_sampler_state_restores_exactly(index):
    stage = StageConfig(name="s", steps=50)
    a = _sampler(index)
    for step in range(7):
        a.plan(step, stage, 0.0)
    state = a.state_dict()
    b = _sampler(index)
    b.load_state_dict(state)
    for step in range(7, 15):
        assert a.plan(step, stage, 0.0) == b.plan(step, stage, 0.0)


def test_stage_schedule():
    cur = [StageConfig(name="a", steps=3), StageConfig(name="b", steps=4)]
    assert stage_at(cur, 0)[1].name == "a" and stage_at(cur, 3)[:3:2] == (1, 0)
    with pytest.raises(ValueError, match="past the curriculum"):
        stage_at(cur, 7)
    st = StageConfig(name="c", steps=10, lr=1.0, warmup_steps=2, lr_decay="cosine", min_lr=0.1)
    assert stage_lr(st, 0) == pytest.approx(0.5) and stage_lr(st, 1) == pytest.approx(1.0)
    assert stage_lr(st, 2) == pytest.approx(1.0)
    assert stage_lr(st, 6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    lin = StageConfig(name="d", steps=4, lr=1.0, lr_decay="linear")
    assert [stage_lr(lin, i) for i in range(4)] == pytest.approx([1.0, 0.75, 0.5, 0.25])
