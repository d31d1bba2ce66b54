"""The streaming curation: index parts and embedding store on disk, dedup over the store,
caption units resumed where they stopped, streaming balance weights, bounded work in flight."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from mugv_data.clip_index import IndexEmbeddings, IndexWriter
from mugv_data.config import load_config
from mugv_data.curate import curate, read_rejects
from mugv_data.dataset_units import TagBalance, build_dedup_worker, read_duplicates
from mugv_data.engines import ProcessPoolEngine, SequentialEngine, WorkerSpec
from mugv_data.stages.base import Resources
from mugv_data.synth import scene, write_video
from mugv_data.tags import balanced_weights
from mugv_data_engine_workers import build_square
from mugv_formats import ClipDataset


def _row(key: str, emb) -> dict:
    return dict(
        key=key, source=b"/v/a.mp4", source_id="a", start_frame=0, end_frame=1, start_s=0.0,
        end_s=1.0, fps=1.0, num_frames=1, width=1, height=1, scores="{}", decoder=None,
        source_fps=None, embedding=[float(x) for x in emb], clip_embedding=None,
    )  # fmt: skip


def greedy_reference(emb_ND: np.ndarray, threshold: float) -> dict[int, tuple[int, float]]:
    """Written from the spec in float64: row j is a duplicate of the most similar earlier
    row that is not itself a duplicate, when that similarity is >= threshold."""
    e = emb_ND.astype(np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    kept: list[int] = []
    dup = {}
    for j in range(len(e)):
        sims = [(float(e[i] @ e[j]), i) for i in kept]
        best = max(sims, default=(-2.0, -1))
        if best[0] >= threshold:
            dup[j] = (best[1], best[0])
        else:
            kept.append(j)
    return dup


@pytest.mark.parametrize("method", ["exact", "clustered"])
def test_dedup_unit_over_the_index_matches_a_float64_reference(tmp_path, method):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((12, 8))
    emb = np.concatenate([base, base[[1, 4, 4, 9]] + 0.01 * rng.standard_normal((4, 8))])
    emb = emb[rng.permutation(len(emb))]
    index = tmp_path / "index"
    index.mkdir()
    w = IndexWriter(index, part_clips=5)  # four parts: pairs span parts
    for i, e in enumerate(emb):
        w.add(_row(f"c{i:02d}", e))
    fingerprint = w.close()
    src = IndexEmbeddings(index, "embedding")
    assert len(src) == 16 and len(src.parts) == 4
    config = load_config(overrides=["dedup.threshold=0.99", f"dedup.method={method}", "dedup.clusters=3"])
    unit = dict(index=str(index), column="embedding", store=str(tmp_path / "store"),
                out=str(tmp_path / "dedup.parquet"), fingerprint=fingerprint)  # fmt: skip
    assert build_dedup_worker(config)(unit) == 4
    assert not (tmp_path / "store").exists()  # the worker's scratch store is removed
    got = {k: (of, round(s, 5)) for k, (of, s) in read_duplicates(tmp_path / "dedup.parquet").items()}
    ref = greedy_reference(emb, 0.99)
    assert len(ref) == 4
    assert got == {f"c{j:02d}": (f"c{i:02d}", round(s, 5)) for j, (i, s) in ref.items()}


def test_streaming_balance_weights_equal_the_whole_list_weights():
    rng = np.random.default_rng(1)
    vocab = ["person", "animal", "car", "sky"]
    tags = [
        sorted(rng.choice(vocab, rng.integers(0, 3), replace=False).tolist()) for _ in range(300)
    ]
    for alpha in (0.0, 0.5, 1.0):
        b = TagBalance(alpha)
        for t in tags:
            b.add(t)
        got = np.array([b.weight(t) for t in tags])
        np.testing.assert_allclose(got, balanced_weights(tags, alpha), rtol=1e-12)


def _pulls_counter():
    state = {"pulled": 0}

    def units():
        for i in itertools.count():
            if i >= 40:
                return
            state["pulled"] += 1
            yield i

    return state, units()


def test_engines_hold_bounded_work_in_flight():
    cfg = load_config(None, overrides=["engine.workers=2", "engine.max_in_flight=2"])
    spec = WorkerSpec("square", build_square, Resources(cpus=1))
    for engine in (SequentialEngine(cfg), ProcessPoolEngine(cfg)):
        state, units = _pulls_counter()
        it = engine.map(spec, units)
        first = next(it)
        assert state["pulled"] <= 2 * 2 + 1, (type(engine).__name__, state)
        rest = list(it)
        assert sorted(u for u, _ in [first, *rest]) == list(range(40))
        assert all(r == u * u for u, r in [first, *rest])


def test_captions_resume_at_the_unit_where_they_stopped(tmp_path, monkeypatch):
    """A run killed after its first caption unit captions only the other units on resume,
    and ends with the same shards and rejects as a run never interrupted."""
    import mugv_data.curate as curate_mod
    import mugv_data.stages.dataset as dataset

    d = tmp_path / "in"
    d.mkdir()
    for i in range(3):
        write_video(d / f"v{i}.mp4", scene(60, seed=20 + i))
        (d / f"v{i}.txt").write_text(f"a dog and a car number {i}")
    over = [
        "engine.kind=sequential", "filters.text.enabled=false", "split.min_clip_s=0.5",
        "split.max_clip_s=1.0", "captions.source=sidecar", "captions.batch_size=1",
        "dedup.threshold=0.999",
    ]  # fmt: skip
    ref = load_config(None, inputs=[str(d)], output=str(tmp_path / "ref"), overrides=over)
    curate(ref, progress=False)
    ref_recs = [(r.key, r.sha256, r.caption, r.tags, r.sample_weight) for r in ClipDataset(tmp_path / "ref").records()]  # fmt: skip
    assert len(ref_recs) > 4 and all(r[2].startswith("a dog") for r in ref_recs)

    calls: list[int] = []
    real_process = dataset.CaptionStage.process

    def counting(self, clips):
        calls.append(len(clips))
        return real_process(self, clips)

    monkeypatch.setattr(dataset.CaptionStage, "process", counting)
    real_write = curate_mod.write_caption_unit

    def die_after_first(out, name, rows):
        real_write(out, name, rows)
        raise KeyboardInterrupt("killed after the first caption unit")

    monkeypatch.setattr(curate_mod, "write_caption_unit", die_after_first)
    cfg = load_config(None, inputs=[str(d)], output=str(tmp_path / "out"), overrides=over)
    with pytest.raises(KeyboardInterrupt):
        curate(cfg, progress=False)
    assert len(calls) == 1
    monkeypatch.setattr(curate_mod, "write_caption_unit", real_write)
    calls.clear()
    curate(cfg, progress=False)
    units = -(-sum(1 for _ in ref_recs) // 4)  # units of batch_size * 4 clips, none are dups
    assert len(calls) == units - 1
    got = [(r.key, r.sha256, r.caption, r.tags, r.sample_weight) for r in ClipDataset(tmp_path / "out").records()]  # fmt: skip
    assert got == ref_recs
    assert read_rejects(tmp_path / "out") == read_rejects(tmp_path / "ref")
