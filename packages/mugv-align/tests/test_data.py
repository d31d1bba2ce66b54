"""Preference sampler (sources interleaved by weight) and the shared noise of a pair."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mugv_align.data import PreferenceSampler, Source, item_seed, prepare_group
from mugv_dit.config import ObjectiveConfig


def _source(name: str, buckets: dict) -> Source:
    return Source(Path(name), "dpo", [], None, {}, buckets)


def _sampler(seed=5):
    a = _source("a", {(1, 4, 4, 32, 32): list(range(6)), (3, 4, 4, 32, 32): [6, 7]})
    b = _source("b", {(1, 4, 4, 32, 32): list(range(5))})
    return PreferenceSampler(
        [a, b], [3.0, 1.0], items_per_micro_batch=2, micro_batches_per_step=2, seed=seed
    )


def test_sources_interleave_by_weight_and_epochs_cover_every_item():
    s = _sampler()
    plans = [s.plan(step) for step in range(2000)]
    share_a = sum(src == 0 for src, _ in plans) / len(plans)
    assert share_a == pytest.approx(0.75, abs=0.03)
    # within one (source, bucket) an epoch visits every item once before repeating, and
    # each visit carries its epoch (the item's visit count: the seed of its fresh draw)
    b_items = [i for src, micro in plans if src == 1 for mb in micro for i in mb]
    for e in range(len(b_items) // 5):
        assert sorted(b_items[5 * e : 5 * e + 5]) == [(i, e) for i in range(5)]


def test_plans_resume_from_saved_cursors():
    full = _sampler()
    want = [full.plan(step) for step in range(40)]
    first = _sampler()
    for step in range(17):
        first.plan(step)
    resumed = _sampler()
    resumed.load_state_dict(first.state_dict())
    assert [resumed.plan(step) for step in range(17, 40)] == want[17:]


def test_pair_shares_noise_level_task_and_noise():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 3, 4, 4, generator=g)
    cfg = ObjectiveConfig(task_ratios={"t2v": 1.0, "i2v": 1.0}, caption_dropout=0.5)
    noisy, sigma, target, mask, _ = prepare_group(x0, 32, 32, cfg, seed=123)
    assert sigma[0] == sigma[1] and torch.equal(mask[0], mask[1])
    noise = x0 - target  # v = x0 - eps
    torch.testing.assert_close(noise[0], noise[1])
    s = float(sigma[0])
    keep = mask[0][None, :, None, None]
    for i in range(2):
        want = torch.where(keep, (1 - s) * x0[i] + s * noise[i], x0[i])
        torch.testing.assert_close(noisy[i], want)
    # the same seed reproduces the draw; a single sample (KTO) draws the same as a pair
    again = prepare_group(x0[:1], 32, 32, cfg, seed=123)
    torch.testing.assert_close(again[0][0], noisy[0])
    assert item_seed(7, "a>b") == item_seed(7, "a>b") != item_seed(8, "a>b")
