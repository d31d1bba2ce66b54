"""mugv-align with issue 25's pieces: the preference sampler draws by ``sample_weight``
(binomial tolerance, exact resume, equal weights unchanged) and SFT / DPO runs validate
with mugv-dit's held-out validation (the same numbers as a mugv-dit run of their weights)."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import yaml
from mugv_align_fixtures import make_export, make_task_latents, write_config, write_labels

# chosen ("good-") weight of pair / KTO sample i; the losers keep 1.0
GOOD = [1.0, 0.5, 2.0, 1.0, 3.0, 0.0, 4.0, 6.5]


@pytest.fixture(scope="module")
def sets(megatron_single, tmp_path_factory):
    from mugv_align.prefs import make_prefs

    tmp = tmp_path_factory.mktemp("aw")
    weights = {f"good-{i:03d}": w for i, w in enumerate(GOOD)}
    make_task_latents(tmp / "lat", prompts=8, seed=0, weights=weights)
    make_task_latents(tmp / "held", prompts=3, seed=1, start=100)  # 6 samples
    make_export(tmp / "init", seed=0)
    for kind in ("dpo", "kto"):
        make_prefs(tmp / "lat", write_labels(tmp / f"{kind}.jsonl", range(8), kind), tmp / kind)
    return tmp


def _sampler(src, weighted=True):
    from mugv_align.data import PreferenceSampler

    return PreferenceSampler([src], [1.0], items_per_micro_batch=1, micro_batches_per_step=1,
                             seed=3, weighted=weighted)  # fmt: skip


def _binomial_ok(counts: Counter, weights: list[float], n: int) -> bool:
    """Every count within 4.5 standard deviations of ``n * w / sum(w)``."""
    total = sum(weights)
    return all(
        abs(counts[i] - n * w / total) <= 4.5 * math.sqrt(n * (w / total) * (1 - w / total)) + 1e-9
        for i, w in enumerate(weights)
    )


@pytest.mark.parametrize("kind", ["dpo", "kto"])
def test_preference_draws_follow_sample_weight(sets, kind):
    from mugv_align.data import load_source

    src = load_source(sets / kind, kind=kind, text_dim=32, channels=4)
    # DPO: pair i by its chosen sample's weight; KTO: good-i and bad-i (1.0) by their own
    want = GOOD if kind == "dpo" else [w for g in GOOD for w in (g, 1.0)]
    keys = [it.chosen if kind == "dpo" else it.key for it in src.items]
    assert [src.draw_weights[keys.index(f"good-{i:03d}")] for i in range(8)] == GOOD
    n = 4000
    sampler = _sampler(src)
    plans = [sampler.plan(step)[1][0][0] for step in range(n)]
    counts = Counter(v.index for v in plans)
    assert sum(counts.values()) == n and counts[keys.index("good-005")] == 0
    order = src.draw_weights
    assert sorted(order) == sorted(want)
    assert _binomial_ok(counts, order, n)
    # every draw its own noise: the visit is the pool's draw count
    assert [v.visit for v in plans[:5]] == [0, 1, 2, 3, 4]
    uniform = Counter(_sampler(src, weighted=False).plan(s)[1][0][0].index for s in range(n))
    assert not _binomial_ok(uniform, order, n)
    # exact resume from the saved cursors; the switch must match
    again = _sampler(src)
    again.load_state_dict(json.loads(json.dumps(sampler.state_dict())))
    assert [again.plan(s) for s in range(n, n + 30)] == [sampler.plan(s) for s in range(n, n + 30)]
    with pytest.raises(ValueError, match="same data.weighted_sampling"):
        _sampler(src, weighted=False).load_state_dict(sampler.state_dict())


def test_equal_weights_keep_the_epochs(sets, tmp_path):
    """Weights all equal: the weighted sampler is the uniform one, plan for plan."""
    from mugv_align.data import load_source
    from mugv_align.prefs import make_prefs

    make_task_latents(tmp_path / "lat", prompts=5, weights={f"good-{i:03d}": 2.0 for i in range(5)})
    make_prefs(tmp_path / "lat", write_labels(tmp_path / "l.jsonl", range(5), "dpo"), tmp_path / "p")
    src = load_source(tmp_path / "p", kind="dpo", text_dim=32, channels=4)
    on, off = _sampler(src), _sampler(src, weighted=False)
    assert on.item_weights == [None]
    assert [on.plan(s) for s in range(20)] == [off.plan(s) for s in range(20)]


@pytest.mark.parametrize("mode", ["sft", "dpo"])
def test_align_runs_validate_like_mugv_dit(sets, tmp_path, mode):
    """An SFT / DPO run with ``validation`` logs it every 2 steps and keeps it in its
    checkpoint; its final validation equals a mugv-dit trainer's validation of the run's
    exported weights (before any step)."""
    from mugv_align.config import load_align_config
    from mugv_align.trainer import AlignTrainer
    from mugv_dit.config import load_config
    from mugv_dit.interop.export import export_checkpoint, run_checkpoint
    from mugv_dit.trainer import Trainer

    align = {"mode": mode, "ema_sigma_rels": []}
    if mode == "dpo":
        align["preference"] = [{"path": str(sets / "dpo")}]
    cfg = write_config(
        tmp_path / "a.yaml", tmp_path / "run", steps=4, align=align,
        train={"init_from": str(sets / "init")},
        data={"path": str(sets / "lat")} if mode == "sft" else None,
        validation={"path": str(sets / "held"), "every_steps": 2, "noise_levels": 2},
    )  # fmt: skip
    trainer = AlignTrainer(load_align_config(cfg), micro_batches_per_step=1)
    try:
        trainer.run()
        history = list(trainer.validations)
    finally:
        trainer.close()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    records = [r["validation"] for r in map(json.loads, lines) if "validation" in r]
    assert [r["steps_done"] for r in records] == [2, 4] == [r["steps_done"] for r in history]
    assert records[-1]["items"] == 6 * 2 and math.isfinite(records[-1]["loss"])
    ckpt = run_checkpoint(tmp_path / "run")
    export_checkpoint(ckpt, load_align_config(cfg).model, tmp_path / "export", weights="model")
    dit_cfg = write_config(
        tmp_path / "d.yaml", tmp_path / "dit", steps=1, align={},
        train={"init_from": str(tmp_path / "export")}, data={"path": str(sets / "lat")},
        validation={"path": str(sets / "held"), "every_steps": 2, "noise_levels": 2},
    )  # fmt: skip
    raw = yaml.safe_load(dit_cfg.read_text())
    del raw["align"]  # a plain mugv-dit run config
    dit_cfg.write_text(yaml.safe_dump(raw))
    dit = Trainer(load_config(dit_cfg), micro_batches_per_step=1)
    try:
        got = dit.validate()
    finally:
        dit.close()
    for key, value in records[-1].items():
        if key.startswith("loss"):
            assert got[key] == pytest.approx(value, rel=1e-6), key
