"""Clustered (faiss k-means) near-duplicate search and the on-disk embedding store, against the
exact all-pairs search (the oracle) and against float64 pair lists written from the rule."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from mugv_data.dedup import (
    EmbeddingStore,
    EmbeddingStoreWriter,
    clustered_near_duplicates,
    dedup_store,
    find_duplicates,
    greedy_from_edges,
    near_duplicates,
)


def planted_data(n=3000, d=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, d))
    x = centres[rng.integers(0, 20, n)] * 0.5 + rng.standard_normal((n, d))
    rows = rng.permutation(n)[: n // 5]
    for a in range(0, len(rows) - 2, 3):  # groups of 3 scattered over the rows
        for b in (1, 2):
            x[rows[a + b]] = x[rows[a]] + 0.03 * rng.standard_normal(d)
    return x


def float64_rule(x: np.ndarray, threshold: float) -> dict[int, int]:
    """The greedy rule written plainly in float64: {duplicate row: kept row}."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = u @ u.T
    kept: list[int] = []
    out = {}
    for j in range(len(u)):
        near = [i for i in kept if s[i, j] >= threshold]
        if near:
            out[j] = max(near, key=lambda i: (s[i, j], -i))
        else:
            kept.append(j)
    return out


def check_same(res_dict, exact):
    assert {j: i for j, (i, _) in res_dict.items()} == {j: i for j, (i, _) in exact.items()}
    for j, (_, s) in exact.items():
        assert res_dict[j][1] == pytest.approx(s, abs=1e-5)


def test_clustered_equals_exact_on_planted_groups():
    x = planted_data()
    exact = near_duplicates(x, 0.97)
    assert len(exact) == 2 * (3000 // 5 // 3)  # every planted copy, nothing else
    res = clustered_near_duplicates(x, 0.97, n_clusters=16, max_probe=3)
    check_same(res.as_dict(), exact)
    assert res.stats["clusters"] == 16 and res.stats["edges"] >= len(exact)


def test_clustered_is_exact_when_no_guest_list_is_cut():
    """Low dimension, low threshold: many pairs straddle cluster borders. With every
    cluster probed nothing is cut, and the triangle-inequality guests find every pair."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((600, 4))
    ref = float64_rule(x, 0.9)
    res = clustered_near_duplicates(x, 0.9, n_clusters=12, max_probe=12)
    assert res.stats["truncated_rows"] == 0
    assert {j: i for j, (i, _) in res.as_dict().items()} == ref
    # home clusters only would miss pairs here: the guests are what makes it exact
    home_only = clustered_near_duplicates(x, 0.9, n_clusters=12, max_probe=1)
    assert len(home_only.dup_rows) < len(ref)


def test_greedy_chain_keeps_the_row_whose_only_neighbour_was_rejected():
    # a~b, b~c, a !~ c: b is a duplicate of a, c stays (its only neighbour b is gone)
    x = np.array([[1.0, 0.0], [np.cos(0.3), np.sin(0.3)], [np.cos(0.6), np.sin(0.6)]])
    t = float(np.cos(0.35))
    assert {j: i for j, (i, _) in near_duplicates(x, t).items()} == {1: 0}
    dup, kept, _ = greedy_from_edges(
        3, np.array([1, 0]), np.array([2, 1]), np.array([0.95, 0.95], np.float32)
    )
    assert dup.tolist() == [1] and kept.tolist() == [0]
    # ties go to the smallest kept row
    dup, kept, _ = greedy_from_edges(
        3, np.array([1, 0]), np.array([2, 2]), np.array([0.9, 0.9], np.float32)
    )
    assert dup.tolist() == [2] and kept.tolist() == [0]


def test_store_round_trip_multi_pass_and_decisions_file(tmp_path):
    x = planted_data(n=2000, d=16, seed=2)
    store = tmp_path / "emb"
    w = EmbeddingStoreWriter(store, 16)
    for a in range(0, 1200, 400):
        w.add([f"c{i}" for i in range(a, a + 400)], x[a : a + 400])
    # a resumed writer continues the numbering; a part without its keys file is not complete
    w2 = EmbeddingStoreWriter(store, 16)
    w2.add([f"c{i}" for i in range(1200, 2000)], x[1200:])
    (store / "part-000099.npy").write_bytes(b"junk")
    s = EmbeddingStore(store)
    assert len(s) == 2000 and s.dim == 16 and [p.name for p, *_ in s.parts][-1] == "part-000003.npy"
    assert s.keys()[:2] == ["c0", "c1"] and len(s.keys()) == 2000
    ref = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert np.allclose(s.read_all(), ref, atol=1e-6)
    rows = np.array([1999, 3, 1200, 3])
    assert np.allclose(s.gather(rows), ref[rows], atol=1e-6)

    exact = near_duplicates(x, 0.97)
    # memory_mb=0 forces one pass per few clusters: same decisions as one pass
    res = dedup_store(store, 0.97, method="clustered", n_clusters=10, memory_mb=0, block=64)
    assert res.stats["passes"] > 1
    check_same(res.as_dict(), exact)
    t = pq.read_table(store / "decisions.parquet").to_pydict()
    assert t["row"] == sorted(exact)
    assert t["clip_id"] == [f"c{j}" for j in sorted(exact)]
    assert t["duplicate_of"] == [f"c{exact[j][0]}" for j in sorted(exact)]
    # deterministic: a second run writes the same decisions
    again = dedup_store(store, 0.97, method="clustered", n_clusters=10, out=tmp_path / "d2.parquet")
    assert pq.read_table(tmp_path / "d2.parquet").equals(pq.read_table(store / "decisions.parquet"))
    assert again.as_dict().keys() == res.as_dict().keys()
    # auto: small stores take the exact search
    assert find_duplicates(s, 0.97).stats["method"] == "exact"


def test_store_errors_name_the_problem(tmp_path):
    w = EmbeddingStoreWriter(tmp_path / "s", 4)
    with pytest.raises(ValueError, match=r"need \[2, 4\] vectors"):
        w.add(["a", "b"], np.ones((2, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        w.add(["a"], np.array([[1.0, np.nan, 0, 0]]))
    w.add(["a"], np.ones((1, 4)))
    with pytest.raises(ValueError, match="holds 4-d vectors, cannot add 8-d"):
        EmbeddingStoreWriter(tmp_path / "s", 8)
    with pytest.raises(ValueError, match="not a folder"):
        EmbeddingStore(tmp_path / "missing")
    with pytest.raises(ValueError, match="method must be"):
        find_duplicates(np.ones((2, 4)), 0.9, method="lsh")


def test_dedup_stage_clustered_gives_the_exact_verdicts():
    from mugv_data.config import load_config
    from mugv_data.per_source import ClipOutcome, SourceResult
    from mugv_data.stages.dataset import DedupStage, KeptClip, run_dataset_stages

    x = planted_data(n=400, d=16, seed=3)

    def clips():
        src = SourceResult(source="/v/a.mp4", source_id="a")
        return [
            KeptClip(src, ClipOutcome(f"k{i}", i, 0, 1, 0, 1, {}, None, None, embedding=list(v)))
            for i, v in enumerate(x)
        ]

    base = ["dedup.threshold=0.97", "dedup.embedding=thumbnail"]
    exact_cfg = load_config(None, overrides=[*base, "dedup.method=exact"])
    cl_cfg = load_config(None, overrides=[*base, "dedup.method=clustered", "dedup.clusters=4"])
    _, rej_exact = run_dataset_stages([DedupStage(exact_cfg)], clips())
    _, rej_cl = run_dataset_stages([DedupStage(cl_cfg)], clips())
    assert len(rej_exact) == len(near_duplicates(x, 0.97)) > 0
    assert [r["key"] for r in rej_cl] == [r["key"] for r in rej_exact]
    assert [r["reason"][:22] for r in rej_cl] == [r["reason"][:22] for r in rej_exact]
