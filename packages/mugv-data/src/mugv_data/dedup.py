"""Near-duplicate removal by cosine similarity of clip embeddings.

One rule, two searches. The rule (greedy in row order): row ``j`` is a duplicate when some
earlier row ``i`` that was itself kept has ``cos(i, j) >= threshold``; it is reported against
the most similar such row (ties: the smallest ``i``). Rows are L2-normalised first.

- :func:`near_duplicates`: exact all-pairs search in blocks, O(N^2 D). For small sets and as
  the test oracle.
- :func:`clustered_near_duplicates`: faiss k-means (SemDeDup-style) partitions the rows; each
  row lives in its nearest cluster (its *home*) and, as a *guest*, in every other cluster whose
  centroid is at most ``2 r`` farther (``r = sqrt(2 - 2 threshold)``, the distance of a pair at
  the threshold; at most ``max_probe`` clusters). By the triangle inequality a pair within ``r``
  always meets in the home cluster of one of them, so the candidate pairs are those of exact
  search unless a row's guest list was cut at ``max_probe`` (counted as ``truncated_rows``).
  Clusters are processed one at a time (home rows x all members, in blocks); no process holds
  all pairs, only the near-duplicate edges. Candidate pairs are re-scored in float64 (the
  similarity and the verdict do not depend on the blocking or the BLAS). The vectors are read in sequential passes, each
  holding at most ``memory_mb`` of member vectors, so memory does not grow with N.

Both take an in-memory ``[N, D]`` array or an :class:`EmbeddingStore`: an on-disk folder of
parts ``part-NNNNNN.npy`` (float32 ``[n, D]``) + ``part-NNNNNN.keys.parquet`` (column
``clip_id``), written by :class:`EmbeddingStoreWriter` (atomic; the keys file is written last,
so a part is complete when both exist). :func:`dedup_store` runs the search over a store and
writes the decisions (``decisions.parquet``: row, clip_id, duplicate_of, similarity), the same
for the same store and settings.

Shape legend: N rows, D embedding size, C clusters, P probes (clusters per row).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PART_RE = re.compile(r"^part-(\d{6})\.npy$")
DECISIONS = "decisions.parquet"
SLACK = 1e-4
"""float32 products this far below the threshold are re-scored in float64 (the verdict)."""


def normalize_rows(x_ND: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x_ND, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def near_duplicates(
    emb_ND: np.ndarray, threshold: float, block: int = 4096
) -> dict[int, tuple[int, float]]:
    """Exact greedy dedup in row order: row j is a duplicate of the first earlier kept row i with
    cos(i, j) >= threshold. Returns {duplicate row: (kept row, similarity)}.

    Embeddings are L2-normalised here; cost O(N^2 D) in blocks of ``block`` rows.
    """
    emb = np.asarray(emb_ND, dtype=np.float32)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {emb.shape}")
    n = len(emb)
    if n == 0:
        return {}
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    kept: list[int] = []
    dup: dict[int, tuple[int, float]] = {}
    kept_mat = np.zeros((0, emb.shape[1]), np.float32)
    for start in range(0, n, block):
        chunk = emb[start : start + block]
        # similarities to rows kept in earlier blocks
        prev = chunk @ kept_mat.T if len(kept_mat) else np.zeros((len(chunk), 0), np.float32)
        within = chunk @ chunk.T
        new_kept: list[int] = []
        for r in range(len(chunk)):
            j = start + r
            best, best_i = -2.0, -1
            if prev.shape[1]:
                k = int(np.argmax(prev[r]))
                best, best_i = float(prev[r, k]), kept[k]
            if new_kept:
                rel = np.asarray(new_kept) - start
                k = int(np.argmax(within[r, rel]))
                if float(within[r, rel[k]]) > best:
                    best, best_i = float(within[r, rel[k]]), new_kept[k]
            if best >= threshold:
                dup[j] = (best_i, best)
            else:
                new_kept.append(j)
        kept.extend(new_kept)
        kept_mat = np.concatenate([kept_mat, emb[new_kept]]) if new_kept else kept_mat
    return dup


# --------------------------------------------------------------------------- on-disk store


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


class EmbeddingStoreWriter:
    """Appends parts of ``(clip_id, vector)`` rows to a store folder; each :meth:`add` is one
    atomic part, numbered after the parts already there (a resumed writer continues). Row order
    is the order of the parts, then of the rows: write in a deterministic order (the greedy rule
    keeps the earlier row of a pair)."""

    def __init__(self, folder: str | Path, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"embedding store {folder}: dim must be >= 1, got {dim}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dim = int(dim)
        parts = EmbeddingStore(self.folder).parts
        if parts and parts[0][2] != self.dim:
            raise ValueError(
                f"embedding store {self.folder}: holds {parts[0][2]}-d vectors, "
                f"cannot add {self.dim}-d ones"
            )
        self._next = (int(PART_RE.match(parts[-1][0].name).group(1)) + 1) if parts else 0

    def add(self, keys: Sequence[str], vectors_ND: np.ndarray) -> Path:
        """Write one part; returns its ``.npy`` path. Vectors are stored L2-normalised."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        from mugv_formats import atomic_write_bytes

        v = np.asarray(vectors_ND, dtype=np.float32)
        if v.ndim != 2 or v.shape[1] != self.dim or len(v) != len(keys):
            raise ValueError(
                f"embedding store {self.folder}: need [{len(keys)}, {self.dim}] vectors for "
                f"{len(keys)} keys, got shape {v.shape}"
            )
        if not np.isfinite(v).all():
            raise ValueError(f"embedding store {self.folder}: non-finite vector values")
        name = f"part-{self._next:06d}"
        npy = self.folder / f"{name}.npy"
        atomic_write_bytes(npy, _npy_bytes(normalize_rows(v)))
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({"clip_id": pa.array([str(k) for k in keys], pa.string())}), sink)
        atomic_write_bytes(self.folder / f"{name}.keys.parquet", sink.getvalue().to_pybytes())
        self._next += 1
        return npy


class EmbeddingStore:
    """Read side of a store folder (complete parts only, in part order). Vectors are read in
    chunks from the files (never memory-mapped whole), so reading does not grow the process."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ValueError(f"embedding store {self.folder} is not a folder")
        self.parts: list[tuple[Path, int, int, int]] = []
        """(npy path, rows, dim, header bytes) of every complete part."""
        for p in sorted(self.folder.iterdir()):
            if not PART_RE.match(p.name) or not p.with_suffix(".keys.parquet").is_file():
                continue
            mm = np.load(p, mmap_mode="r", allow_pickle=False)
            if mm.ndim != 2 or mm.dtype != np.float32:
                raise ValueError(f"{p}: not a float32 [n, D] array ({mm.dtype}, {mm.shape})")
            rows, dim, offset = mm.shape[0], mm.shape[1], int(mm.offset)
            del mm
            if self.parts and dim != self.parts[0][2]:
                raise ValueError(
                    f"{p}: {dim}-d vectors, the store's first part has {self.parts[0][2]}"
                )
            self.parts.append((p, rows, dim, offset))
        self.starts = np.cumsum([0] + [r for _, r, _, _ in self.parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def dim(self) -> int:
        return self.parts[0][2] if self.parts else 0

    def keys(self) -> list[str]:
        """clip_id of every row, in row order (checked against each part's row count)."""
        import pyarrow.parquet as pq

        out: list[str] = []
        for p, rows, _, _ in self.parts:
            kp = p.with_suffix(".keys.parquet")
            ks = pq.read_table(kp, columns=["clip_id"]).column("clip_id").to_pylist()
            if len(ks) != rows:
                raise ValueError(f"{kp}: {len(ks)} keys for {rows} vectors in {p.name}")
            out.extend(ks)
        return out

    def iter_chunks(self, rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 [n, D] unit rows) chunks covering the store in order."""
        for (p, n, d, offset), start in zip(self.parts, self.starts[:-1], strict=True):
            with open(p, "rb") as f:
                for a in range(0, n, rows):
                    k = min(rows, n - a)
                    f.seek(offset + a * d * 4)
                    buf = np.frombuffer(f.read(k * d * 4), dtype=np.float32)
                    if buf.size != k * d:
                        raise ValueError(f"{p}: truncated at row {a}")
                    yield int(start + a), normalize_rows(buf.reshape(k, d))

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """float32 [len(rows), D] unit vectors of the given rows (any order)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), np.float32)
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        part = np.searchsorted(self.starts, srt, side="right") - 1
        for pi in np.unique(part):
            p, _, d, offset = self.parts[pi]
            sel = np.nonzero(part == pi)[0]
            mm = np.memmap(
                p, dtype=np.float32, mode="r", offset=offset, shape=(self.parts[pi][1], d)
            )
            out[order[sel]] = mm[srt[sel] - self.starts[pi]]
            del mm
        return normalize_rows(out)

    def read_all(self) -> np.ndarray:
        """Every vector in memory (small stores only)."""
        if not self.parts:
            return np.zeros((0, 0), np.float32)
        return np.concatenate([c for _, c in self.iter_chunks()])


# ----------------------------------------------------------------------- clustered search


@dataclass
class DedupResult:
    """Decisions of one search: ``dup_rows[k]`` is a duplicate of ``kept_rows[k]`` at cosine
    ``similarity[k]``; sorted by ``dup_rows``."""

    dup_rows: np.ndarray
    kept_rows: np.ndarray
    similarity: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)
    edges: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    """(i, j, similarity) of every candidate pair ``i < j`` at or above the threshold
    (clustered search with ``keep_edges=True``)."""

    def as_dict(self) -> dict[int, tuple[int, float]]:
        """{duplicate row: (kept row, similarity)}, the form :func:`near_duplicates` returns."""
        return {
            int(j): (int(i), float(s))
            for j, i, s in zip(self.dup_rows, self.kept_rows, self.similarity, strict=True)
        }


def greedy_from_edges(
    n: int, i: np.ndarray, j: np.ndarray, sim: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The greedy rule on candidate edges ``i < j`` with ``sim >= threshold``: rows in order,
    a row is a duplicate when one of its earlier neighbours was kept; reported against the
    kept neighbour of highest similarity (ties: smallest i). Returns (dup, kept, sim)."""
    kept_flag = np.ones(n, dtype=bool)
    if len(j) == 0:
        e = np.zeros(0, np.int64)
        return e, e, np.zeros(0, np.float32)
    order = np.lexsort((i, j))
    i, j, sim = i[order], j[order], sim[order]
    bounds = np.flatnonzero(np.diff(j)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(j)]])
    dups, kepts, sims = [], [], []
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        ii = i[a:b]
        ok = kept_flag[ii]
        if not ok.any():
            continue
        s = np.where(ok, sim[a:b], -np.inf)
        k = int(np.argmax(s))  # first max: smallest i among ties (i sorted)
        jj = int(j[a])
        kept_flag[jj] = False
        dups.append(jj)
        kepts.append(int(ii[k]))
        sims.append(float(sim[a + k]))
    return (
        np.asarray(dups, np.int64),
        np.asarray(kepts, np.int64),
        np.asarray(sims, np.float32),
    )


def _chunks_of(source: np.ndarray | EmbeddingStore, rows: int) -> Iterator[tuple[int, np.ndarray]]:
    if isinstance(source, EmbeddingStore):
        yield from source.iter_chunks(rows)
    else:
        for a in range(0, len(source), rows):
            yield a, normalize_rows(source[a : a + rows])


def _train_sample(source: np.ndarray | EmbeddingStore, n: int, size: int, seed: int) -> np.ndarray:
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(size, n), replace=False))
    if isinstance(source, EmbeddingStore):
        return source.gather(rows)
    return normalize_rows(np.asarray(source)[rows])


def clustered_near_duplicates(
    source: np.ndarray | EmbeddingStore,
    threshold: float,
    *,
    n_clusters: int = 0,
    max_probe: int = 8,
    seed: int = 0,
    memory_mb: int = 1024,
    kmeans_iters: int = 10,
    chunk_rows: int = 65536,
    block: int = 2048,
    keep_edges: bool = False,
) -> DedupResult:
    """Greedy dedup (same rule as :func:`near_duplicates`) with candidates from faiss k-means
    clusters; see the module docstring. ``n_clusters`` 0: about ``sqrt(N)``, at most N/40."""
    import faiss

    n = len(source)
    if n == 0:
        e = np.zeros(0, np.int64)
        return DedupResult(e, e, np.zeros(0, np.float32), {"rows": 0})
    d = source.dim if isinstance(source, EmbeddingStore) else int(np.asarray(source).shape[1])
    if not 0 < threshold <= 1:
        raise ValueError(f"dedup threshold must be in (0, 1], got {threshold}")
    c = n_clusters or max(1, min(round(math.sqrt(n)), n // 40))
    c = min(c, n)
    max_probe = max(1, min(max_probe, c))
    r = math.sqrt(max(0.0, 2.0 - 2.0 * threshold))

    # 1. k-means on a sample (faiss: ~40-256 points per centroid)
    sample = _train_sample(source, n, max(40 * c, min(n, 256 * c // 4)), seed)
    km = faiss.Kmeans(d, c, niter=kmeans_iters, seed=seed, spherical=True, verbose=False)
    km.train(sample)
    del sample
    index = faiss.IndexFlatL2(d)
    index.add(km.centroids)

    # 2. assignment: home cluster + guests within 2r of the home distance (at most max_probe)
    mem_cluster, mem_row, mem_home = [], [], []
    truncated = 0
    for start, x in _chunks_of(source, chunk_rows):
        dist2_NP, idx_NP = index.search(x, max_probe)
        dist_NP = np.sqrt(np.maximum(dist2_NP, 0))
        within = dist_NP <= dist_NP[:, :1] + 2 * r + 1e-6
        if max_probe < c:
            truncated += int(within[:, -1].sum())
        rr, pp = np.nonzero(within)
        mem_cluster.append(idx_NP[rr, pp].astype(np.int32))
        mem_row.append((start + rr).astype(np.int64))
        mem_home.append(pp == 0)
    cl = np.concatenate(mem_cluster)
    rows = np.concatenate(mem_row)
    home = np.concatenate(mem_home)
    del mem_cluster, mem_row, mem_home
    order = np.lexsort((rows, cl))
    cl, rows, home = cl[order], rows[order], home[order]
    del order
    cl_start = np.searchsorted(cl, np.arange(c + 1))

    # 3. clusters in batches of at most memory_mb of member vectors; one pass over the source each
    budget_rows = max(block, memory_mb * (1 << 20) // (4 * d))
    edge_i, edge_j, edge_s = [], [], []
    passes = 0
    a = 0
    while a < c:
        b = a + 1
        while b < c and cl_start[b + 1] - cl_start[a] <= budget_rows:
            b += 1
        lo, hi = cl_start[a], cl_start[b]
        batch_rows = rows[lo:hi]
        vec = _load_rows(source, batch_rows, chunk_rows)
        passes += 1
        for k in range(a, b):
            s, e = cl_start[k] - lo, cl_start[k + 1] - lo
            if e - s < 2:
                continue
            m_rows, m_vec, m_home = batch_rows[s:e], vec[s:e], home[lo + s : lo + e]
            h_idx = np.flatnonzero(m_home)
            for h0 in range(0, len(h_idx), block):
                hb = h_idx[h0 : h0 + block]
                for m0 in range(0, e - s, 4 * block):
                    sim = m_vec[hb] @ m_vec[m0 : m0 + 4 * block].T
                    hh, mm = np.nonzero(sim >= threshold - SLACK)
                    ri, rj = m_rows[hb[hh]], m_rows[m0 + mm]
                    # candidates re-scored in float64: the verdict does not depend on blocking
                    s64 = np.einsum(
                        "nd,nd->n",
                        m_vec[hb[hh]].astype(np.float64),
                        m_vec[m0 + mm].astype(np.float64),
                    )
                    keep = (ri != rj) & (s64 >= threshold)
                    if keep.any():
                        edge_i.append(np.minimum(ri, rj)[keep])
                        edge_j.append(np.maximum(ri, rj)[keep])
                        edge_s.append(s64[keep].astype(np.float32))
        del vec
        a = b
    if edge_i:
        ei, ej, es = np.concatenate(edge_i), np.concatenate(edge_j), np.concatenate(edge_s)
        # one edge per pair (a pair may meet in several clusters)
        _, first = np.unique(ei * n + ej, return_index=True)
        ei, ej, es = ei[first], ej[first], es[first]
    else:
        ei = ej = np.zeros(0, np.int64)
        es = np.zeros(0, np.float32)
    dup, kept, sims = greedy_from_edges(n, ei, ej, es)
    stats = {
        "rows": n,
        "dim": d,
        "clusters": c,
        "max_probe": max_probe,
        "members": len(rows),
        "mean_clusters_per_row": len(rows) / n,
        "largest_cluster": int(np.diff(cl_start).max()),
        "truncated_rows": truncated,
        "passes": passes,
        "edges": len(ei),
        "duplicates": len(dup),
    }
    return DedupResult(dup, kept, sims, stats, (ei, ej, es) if keep_edges else None)


def _load_rows(
    source: np.ndarray | EmbeddingStore, rows: np.ndarray, chunk_rows: int
) -> np.ndarray:
    """Unit vectors of ``rows`` (sorted by cluster, not by row) in one sequential pass."""
    if not isinstance(source, EmbeddingStore):
        return normalize_rows(np.asarray(source)[rows])
    out = np.empty((len(rows), source.dim), np.float32)
    order = np.argsort(rows, kind="stable")
    srt = rows[order]
    for start, x in source.iter_chunks(chunk_rows):
        a, b = np.searchsorted(srt, [start, start + len(x)])
        if b > a:
            out[order[a:b]] = x[srt[a:b] - start]
    return out


def find_duplicates(
    source: np.ndarray | EmbeddingStore,
    threshold: float,
    *,
    method: str = "auto",
    exact_max_rows: int = 20000,
    **clustered: Any,
) -> DedupResult:
    """Dispatch: ``exact`` (:func:`near_duplicates`), ``clustered``, or ``auto`` (exact up to
    ``exact_max_rows`` rows)."""
    if method not in ("auto", "exact", "clustered"):
        raise ValueError(f"dedup method must be auto, exact or clustered, got {method!r}")
    n = len(source)
    if method == "exact" or (method == "auto" and n <= exact_max_rows):
        emb = source.read_all() if isinstance(source, EmbeddingStore) else source
        dups = near_duplicates(emb, threshold) if n else {}
        js = sorted(dups)
        return DedupResult(
            np.asarray(js, np.int64),
            np.asarray([dups[j][0] for j in js], np.int64),
            np.asarray([dups[j][1] for j in js], np.float32),
            {"rows": n, "method": "exact", "duplicates": len(js)},
        )
    res = clustered_near_duplicates(source, threshold, **clustered)
    res.stats["method"] = "clustered"
    return res


def dedup_store(
    folder: str | Path,
    threshold: float,
    *,
    out: str | Path | None = None,
    method: str = "auto",
    exact_max_rows: int = 20000,
    **clustered: Any,
) -> DedupResult:
    """Search a store folder and write its decisions (``out``, default
    ``FOLDER/decisions.parquet``): one row per duplicate, sorted by row, columns ``row``,
    ``clip_id``, ``duplicate_of`` (the kept clip), ``similarity``. Deterministic for the same
    store and settings (k-means seeded)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from mugv_formats import atomic_write_bytes

    store = EmbeddingStore(folder)
    res = find_duplicates(
        store, threshold, method=method, exact_max_rows=exact_max_rows, **clustered
    )
    keys = store.keys() if len(res.dup_rows) else []
    table = pa.table(
        {
            "row": pa.array(res.dup_rows, pa.int64()),
            "clip_id": pa.array([keys[j] for j in res.dup_rows], pa.string()),
            "duplicate_of": pa.array([keys[i] for i in res.kept_rows], pa.string()),
            "similarity": pa.array(res.similarity, pa.float32()),
        }
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(Path(out) if out else Path(folder) / DECISIONS, sink.getvalue().to_pybytes())
    return res
