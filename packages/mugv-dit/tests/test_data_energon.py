"""data.loader=energon: every DP rank draws each step from the same bucket with the same
token-budget batch size, the stage's image share is annealed, and the per-rank state
(energon state + bucket reservoirs) restores exactly."""

from __future__ import annotations

import pytest
from mugv_dit.config import StageConfig
from mugv_dit.data.plan import BucketSampler, LatentIndex, tokens_of
from mugv_dit_fixtures import DEFAULT_LAYOUT, make_latent_dataset

STEPS = 24
STAGE = StageConfig(name="anneal", steps=STEPS, image_share_start=1.0, image_share_end=0.0)


# the default layout (with twice the images) one sample at a time, interleaved, so every
# 5-sample shard (and so every DP rank's share of shards) holds every kind of sample
LAYOUT = [(*DEFAULT_LAYOUT[0][:6], 8), *DEFAULT_LAYOUT[1:]]
INTERLEAVED = [(*group[:6], 1) for k in range(8) for group in LAYOUT if k < group[6]]


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    path = tmp_path_factory.mktemp("e") / "ds"
    return LatentIndex(make_latent_dataset(path, energon=True, layout=INTERLEAVED))


@pytest.fixture(scope="module")
def grouped_index(tmp_path_factory):
    """Images only in the first shard: DP rank 1's share has none."""
    return LatentIndex(make_latent_dataset(tmp_path_factory.mktemp("g") / "ds", energon=True))


def _loader(index, dp_rank: int, dp_size: int = 2):
    from mugv_dit.data.energon import EnergonLatentLoader

    sampler = BucketSampler(
        index,
        tokens_per_batch=16,
        max_batch_size=8,
        micro_batches_per_step=4,
        patch=(1, 2, 2),
        seed=3,
    )
    return EnergonLatentLoader(
        index.path, index=index, sampler=sampler, dp_rank=dp_rank, dp_size=dp_size, seed=3
    )


def _step(loader, step: int, n: int = 2):
    return loader.next_batches(step, 0, STAGE, step / STEPS, n, "cpu")


def test_dp_ranks_share_each_steps_bucket_and_token_budget(megatron_single, index):
    ranks = [_loader(index, r) for r in range(2)]
    image_steps = []
    for step in range(STEPS):
        per_rank = [_step(loader, step) for loader in ranks]
        expected = ranks[0].sampler.choose_bucket(step, STAGE, step / STEPS)
        bs = ranks[0].sampler.batch_size(expected)
        tokens = set()
        for batches in per_rank:
            assert len(batches) == 2
            for batch in batches:
                b, _, t, h, w = batch.latents_BCTHW.shape
                assert (t, h, w, batch.height_px, batch.width_px) == expected
                assert b == bs
                tokens.add(b * tokens_of(expected, (1, 2, 2)))
        assert len(tokens) == 1  # equal token count on every rank and micro-batch
        image_steps.append(expected[0] == 1)
    # image share annealed 1 -> 0: images early, videos late
    assert image_steps[0] and not image_steps[-1]
    half = STEPS // 2
    assert sum(image_steps[:half]) > sum(image_steps[half:]) + half // 2, image_steps
    for loader in ranks:
        for bucket, items in loader.reservoirs.items():
            assert len(items) <= loader._capacity(bucket, 2)
    assert [loader.borrowed for loader in ranks] == [0, 0]  # all from the energon streams
    # images stay in the stream after their share drops: the full reservoir thins them
    assert sum(loader.dropped for loader in ranks) > 0


def test_loader_state_restores_exactly(megatron_single, index, tmp_path):
    a = _loader(index, 0, dp_size=1)
    for step in range(5):
        _step(a, step)
    assert any(a.reservoirs.values())  # the restore re-reads waiting samples by key
    a.save(tmp_path / "state.pt")
    b = _loader(index, 0, dp_size=1)
    b.restore(tmp_path / "state.pt")
    for step in range(5, 12):
        got, want = _step(b, step), _step(a, step)
        assert [x.keys for x in got] == [x.keys for x in want], step
        for x, y in zip(got, want):
            assert (x.latents_BCTHW == y.latents_BCTHW).all()


def test_rank_without_the_steps_bucket_reads_it_from_the_manifest(megatron_single, grouped_index):
    loader = _loader(grouped_index, 1)
    with pytest.warns(UserWarning, match="DP rank 1's share of the shards lacks bucket"):
        batches = _step(loader, 0)  # step 0 of the annealed stage is an image step
    images = {r.key for r in grouped_index.records if r.latent_shape[1] == 1}
    assert loader.borrowed == 2 * loader.sampler.batch_size((1, 4, 4, 32, 32))
    for batch in batches:
        assert batch.latents_BCTHW.shape[2] == 1 and set(batch.keys) <= images
    # deterministic: a second loader borrows the same samples
    again = _loader(grouped_index, 1)
    with pytest.warns(UserWarning):
        assert [b.keys for b in _step(again, 0)] == [b.keys for b in batches]


def test_missing_state_file_is_a_clear_error(megatron_single, index, tmp_path):
    with pytest.raises(ValueError, match="energon loader state missing"):
        _loader(index, 0, dp_size=1).restore(tmp_path / "nope.pt")
