"""Balanced sampling: both DiT loaders draw by ``sample_weight``; the empirical frequencies
match the weights within a binomial tolerance, buckets and exact resume are kept, equal
weights keep the uniform epochs."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from mugv_dit.config import StageConfig
from mugv_dit.data.plan import BucketSampler, LatentIndex
from mugv_dit_fixtures import make_latent_dataset

# two buckets of 4 (images, short clips), interleaved so every shard holds both
LAYOUT = [g for _ in range(4) for g in ((1, 4, 4, 1, 32, 32, 1), (3, 4, 4, 17, 32, 32, 1))]
WEIGHTS = [1.0, 0.5, 2.0, 1.0, 3.0, 0.0, 4.0, 6.5]  # sample n's weight (n: write order)
STAGE = StageConfig(name="all", steps=10**6)


@pytest.fixture(scope="module")
def weighted(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "ds"
    return LatentIndex(make_latent_dataset(path, layout=LAYOUT, weights=WEIGHTS, energon=True))


def _sampler(index, weighted=True, micro=1):
    # a 1-token budget: one sample per micro-batch, so every draw is independent
    return BucketSampler(index, tokens_per_batch=1, max_batch_size=1, micro_batches_per_step=micro,
                         patch=(1, 2, 2), seed=11, weighted=weighted)  # fmt: skip


def _assert_binomial(counts: Counter, weights: list[float], n: int) -> None:
    """Each sample's count within 4.5 standard deviations of ``n * w / sum(w)`` (a
    false alarm once in ~10^5 per sample); weight 0: never drawn."""
    total = sum(weights)
    for i, w in enumerate(weights):
        p = w / total
        sd = math.sqrt(n * p * (1 - p))
        assert abs(counts[i] - n * p) <= 4.5 * sd + 1e-9, (i, counts[i], n * p, sd)


def test_plan_draws_follow_sample_weight(weighted):
    sampler = _sampler(weighted)
    assert sampler.weights == WEIGHTS
    n = 4000
    counts = Counter(i for step in range(n) for mb in sampler.plan(step, STAGE, 0.0).micro_batches
                     for i in mb)  # fmt: skip
    assert sum(counts.values()) == n and counts[5] == 0
    _assert_binomial(counts, WEIGHTS, n)
    # uniform for comparison: the same test fails (the weights are far from equal)
    uniform = _sampler(weighted, weighted=False)
    flat = Counter(i for step in range(n) for mb in uniform.plan(step, STAGE, 0.0).micro_batches
                   for i in mb)  # fmt: skip
    with pytest.raises(AssertionError):
        _assert_binomial(flat, WEIGHTS, n)


def test_weighted_plan_keeps_buckets_and_resumes_exactly(weighted):
    a = _sampler(weighted, micro=3)
    for step in range(50):
        plan = a.plan(step, STAGE, 0.0)
        assert {weighted.bucket_of(i) for mb in plan.micro_batches for i in mb} == {plan.bucket}
    state = a.state_dict()
    b = _sampler(weighted, micro=3)
    b.load_state_dict(state)
    for step in range(50, 80):
        assert b.plan(step, STAGE, 0.0) == a.plan(step, STAGE, 0.0)
    with pytest.raises(ValueError, match="weighted sampling on"):
        _sampler(weighted, weighted=False).load_state_dict(state)


def test_equal_weights_keep_the_uniform_epochs(tmp_path):
    """All weights equal (2.0): the sampler is the uniform one, plan for plan."""
    index = LatentIndex(make_latent_dataset(tmp_path / "ds", layout=LAYOUT, weights=[2.0] * 8))
    on, off = _sampler(index), _sampler(index, weighted=False)
    assert on.weights is None
    assert [on.plan(s, STAGE, 0.0) for s in range(20)] == [off.plan(s, STAGE, 0.0) for s in range(20)]


def test_energon_draws_follow_sample_weight(megatron_single, weighted, tmp_path):
    """The energon loader thins its stream by weight: the samples it delivers follow the
    weights within the binomial tolerance, and its state (with the thinning counter)
    restores exactly."""
    from mugv_dit.data.energon import EnergonLatentLoader

    def loader():
        return EnergonLatentLoader(weighted.path, index=weighted, sampler=_sampler(weighted),
                                   dp_rank=0, dp_size=1, seed=11)  # fmt: skip

    keys = {r.key: i for i, r in enumerate(weighted.records)}
    a = loader()
    n = 600
    counts = Counter()
    for step in range(n):
        (batch,) = a.next_batches(step, 0, STAGE, 0.0, 1, "cpu")
        counts.update(keys[k] for k in batch.keys)
    assert counts[5] == 0 and a.thinned > 0
    _assert_binomial(counts, WEIGHTS, n)
    a.save(tmp_path / "state.pt")
    b = loader()
    b.restore(tmp_path / "state.pt")
    for step in range(n, n + 20):
        got, want = b.next_batches(step, 0, STAGE, 0.0, 1, "cpu"), a.next_batches(
            step, 0, STAGE, 0.0, 1, "cpu"
        )
        assert got[0].keys == want[0].keys, step
