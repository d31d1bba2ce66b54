"""Near-duplicate search at corpus scale: clustered faiss dedup over an on-disk embedding store.

Builds a synthetic store of ``--rows`` unit vectors (``--dim``) with planted duplicate groups,
then, each in a fresh child process (its peak RSS is the figure; the parent only generates):

  clustered   :func:`mugv_data.dedup.dedup_store` over the whole store (k-means clusters,
              one cluster at a time, bounded memory), decisions written to parquet
  subset      exact search (:func:`mugv_data.dedup.near_duplicates`, the oracle) and the
              clustered search on the first ``--subset`` rows, compared decision by decision

Synthetic data: ``--concepts`` random unit centres; an ordinary row is
``normalize(centre + noise)`` (cosine ~0.5 between rows of one concept, ~0 across); a planted
group (sizes 2-5, ``--dup-fraction`` of the rows, members scattered over the store) shares one
such base row, each member ``normalize(base + sigma * g / sqrt(D))`` (pairwise cosine ~0.99).
Planted pairs: every pair within a group. Scores: pair recall/precision of the candidate pairs
the search found at ``--threshold`` against the planted pairs, and decision recall/precision
(a planted group keeps its first row and rejects the rest).

    uv run python packages/mugv-data/benchmarks/dedup_scale.py --rows 1000000 \\
        --json docs/benchmarks/data/dedup_scale.json --md docs/benchmarks/data/dedup_scale.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from mugv_data.dedup import (
    EmbeddingStore,
    EmbeddingStoreWriter,
    clustered_near_duplicates,
    dedup_store,
    near_duplicates,
)

CHUNK = 50_000


def plan_groups(n: int, dup_fraction: float, seed: int) -> np.ndarray:
    """group id of every row (-1: none); groups of 2-5 rows scattered over the store."""
    rng = np.random.default_rng(seed)
    group = np.full(n, -1, np.int64)
    budget = int(n * dup_fraction)
    sizes = []
    while sum(sizes) < budget:
        sizes.append(int(rng.integers(2, 6)))
    rows = rng.permutation(n)[: sum(sizes)]
    g, a = 0, 0
    for s in sizes:
        group[rows[a : a + s]] = g
        g, a = g + 1, a + s
    return group


def write_store(folder: Path, n: int, d: int, args) -> np.ndarray:
    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((args.concepts, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    group = plan_groups(n, args.dup_fraction, args.seed + 1)
    n_groups = int(group.max()) + 1
    grng = np.random.default_rng(args.seed + 2)
    bases = centres[grng.integers(0, args.concepts, n_groups)] + grng.standard_normal(
        (n_groups, d)
    ).astype(np.float32) / np.sqrt(d)
    w = EmbeddingStoreWriter(folder, d)
    for a in range(0, n, CHUNK):
        b = min(n, a + CHUNK)
        crng = np.random.default_rng([args.seed, 3, a])
        x = centres[crng.integers(0, args.concepts, b - a)] + crng.standard_normal(
            (b - a, d)
        ).astype(np.float32) / np.sqrt(d)
        g = group[a:b]
        m = g >= 0
        x[m] = bases[g[m]] + args.sigma * crng.standard_normal((int(m.sum()), d)).astype(
            np.float32
        ) / np.sqrt(d)
        w.add([f"clip-{i:08d}" for i in range(a, b)], x)
    return group


def planted(group: np.ndarray) -> tuple[set[tuple[int, int]], set[int]]:
    """(every within-group pair (i < j), every row that should be rejected)."""
    pairs: set[tuple[int, int]] = set()
    dups: set[int] = set()
    order = np.argsort(group, kind="stable")
    g = group[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    ends = np.r_[starts[1:], len(g)]
    for s, e in zip(starts, ends, strict=True):
        if g[s] < 0:
            continue
        members = sorted(order[s:e].tolist())
        dups.update(members[1:])
        pairs.update((a, b) for i, a in enumerate(members) for b in members[i + 1 :])
    return pairs, dups


def scores(found: set, truth: set) -> dict[str, float]:
    tp = len(found & truth)
    return {
        "recall": tp / max(1, len(truth)),
        "precision": tp / max(1, len(found)),
        "found": len(found),
        "truth": len(truth),
    }


def _child(fn, args, q) -> None:
    t = time.perf_counter()
    c0 = time.process_time()
    out = fn(*args)
    out["wall_s"] = time.perf_counter() - t
    out["cpu_s"] = time.process_time() - c0
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    q.put(out)


def in_child(fn, *args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(fn, args, q))
    p.start()
    out = q.get()
    p.join()
    return out


def run_clustered(folder: str, threshold: float, kw: dict) -> dict:
    res = dedup_store(folder, threshold, method="clustered", keep_edges=True, **kw)
    ei, ej, _ = res.edges
    return {
        "stats": res.stats,
        "edges": np.stack([ei, ej], 1).tolist(),
        "dups": res.dup_rows.tolist(),
        "kept": res.kept_rows.tolist(),
    }


def run_subset(folder: str, threshold: float, subset: int, kw: dict) -> dict:
    store = EmbeddingStore(folder)
    x = np.concatenate([c for s, c in store.iter_chunks(CHUNK) if s < subset])[:subset]
    t = time.perf_counter()
    exact = near_duplicates(x, threshold)
    t_exact = time.perf_counter() - t
    t = time.perf_counter()
    cl = clustered_near_duplicates(x, threshold, **kw).as_dict()
    t_cl = time.perf_counter() - t
    same = sum(1 for j in exact if j in cl and cl[j][0] == exact[j][0])
    return {
        "rows": subset,
        "exact_s": t_exact,
        "clustered_s": t_cl,
        "exact_duplicates": len(exact),
        "clustered_duplicates": len(cl),
        "recall_vs_exact": len(set(exact) & set(cl)) / max(1, len(exact)),
        "precision_vs_exact": len(set(exact) & set(cl)) / max(1, len(cl)),
        "same_kept_row": same / max(1, len(exact)),
        "max_similarity_diff": max(
            (abs(cl[j][1] - exact[j][1]) for j in exact if j in cl), default=0.0
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument("--dup-fraction", type=float, default=0.1)
    ap.add_argument("--sigma", type=float, default=0.1)
    ap.add_argument("--concepts", type=int, default=2000)
    ap.add_argument("--subset", type=int, default=50_000)
    ap.add_argument("--clusters", type=int, default=0)
    ap.add_argument("--max-probe", type=int, default=4)
    ap.add_argument("--memory-mb", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--store", default=None, help="folder for the store (default: a temp dir)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    args = ap.parse_args()

    tmp = Path(args.store) if args.store else Path(tempfile.mkdtemp(prefix="dedup-bench-"))
    if tmp.exists() and any(tmp.iterdir()):
        raise SystemExit(f"--store {tmp} is not empty")
    try:
        load0 = os.getloadavg()
        t = time.perf_counter()
        group = write_store(tmp, args.rows, args.dim, args)
        gen_s = time.perf_counter() - t
        truth_pairs, truth_dups = planted(group)
        kw = dict(n_clusters=args.clusters, max_probe=args.max_probe, memory_mb=args.memory_mb)
        cl = in_child(run_clustered, str(tmp), args.threshold, kw)
        load1 = os.getloadavg()
        pairs = scores({tuple(e) for e in cl.pop("edges")}, truth_pairs)
        dups, kept = cl.pop("dups"), cl.pop("kept")
        decisions = scores(set(dups), truth_dups)
        same_group = sum(
            1 for j, i in zip(dups, kept, strict=True) if group[j] >= 0 and group[j] == group[i]
        ) / max(1, len(dups))
        sub = in_child(run_subset, str(tmp), args.threshold, min(args.subset, args.rows), kw)
        load2 = os.getloadavg()
    finally:
        if not args.store:
            shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "benchmark": "dedup_scale",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores",
        "command": "uv run python packages/mugv-data/benchmarks/dedup_scale.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "load_avg_1_5_15": {"start": load0, "after_clustered": load1, "end": load2},
        "args": vars(args),
        "generate_s": gen_s,
        "clustered": cl,
        "pairs_vs_planted": pairs,
        "decisions_vs_planted": {**decisions, "reported_against_same_group": same_group},
        "subset_vs_exact": sub,
        "goals": {
            "wall_s<=600": cl["wall_s"] <= 600,
            "peak_rss<=4GiB": cl["peak_rss_mib"] <= 4096,
            "pair_recall>=0.99": pairs["recall"] >= 0.99,
            "pair_precision>=0.99": pairs["precision"] >= 0.99,
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    if args.md:
        Path(args.md).write_text(markdown(result) + "\n")


def markdown(r: dict) -> str:
    c, s, p, d, sub = (
        r["clustered"],
        r["clustered"]["stats"],
        r["pairs_vs_planted"],
        r["decisions_vs_planted"],
        r["subset_vs_exact"],
    )
    la = r["load_avg_1_5_15"]
    return "\n".join(
        [
            "# Dedup at scale (`dedup_scale.json`)",
            "",
            f"- Device: {r['device']}; date {r['date']}.",
            f"- Command (repo root): `{r['command']}`",
            f"- Load average (1/5/15 min) at start {la['start']}, after the clustered run "
            f"{la['after_clustered']}, at the end {la['end']} (shared machine).",
            f"- Store: {s['rows']:,} unit vectors of {s['dim']} d; threshold "
            f"{r['args']['threshold']}; {p['truth']:,} planted pairs, {d['truth']:,} planted "
            "duplicates.",
            "",
            "| run | wall s | CPU s | peak RSS MiB | clusters | rows/cluster (mean members) "
            "| passes | truncated rows |",
            "|---|---|---|---|---|---|---|---|",
            f"| clustered, whole store | {c['wall_s']:.1f} | {c['cpu_s']:.1f} | "
            f"{c['peak_rss_mib']:.0f} | {s['clusters']} | {s['mean_clusters_per_row']:.2f} | "
            f"{s['passes']} | {s['truncated_rows']:,} |",
            "",
            "| score | recall | precision |",
            "|---|---|---|",
            f"| candidate pairs vs planted pairs | {p['recall']:.4f} | {p['precision']:.4f} |",
            f"| rejected rows vs planted duplicates | {d['recall']:.4f} | {d['precision']:.4f} |",
            f"| {sub['rows']:,}-row subset: clustered vs exact decisions | "
            f"{sub['recall_vs_exact']:.4f} | {sub['precision_vs_exact']:.4f} |",
            "",
            f"Subset: exact search {sub['exact_s']:.1f} s, clustered {sub['clustered_s']:.1f} s; "
            f"same kept row for {sub['same_kept_row']:.4f} of the exact duplicates; largest "
            f"similarity difference {sub['max_similarity_diff']:.2e} (float32 rounding). "
            f"Generation of the store (not timed in the goal): {r['generate_s']:.0f} s.",
        ]
    )


if __name__ == "__main__":
    main()
