"""Near-duplicate removal by cosine similarity of clip embeddings."""

from __future__ import annotations

import numpy as np


def near_duplicates(
    emb_ND: np.ndarray, threshold: float, block: int = 4096
) -> dict[int, tuple[int, float]]:
    """Greedy dedup in row order: row j is a duplicate of the first earlier kept row i with
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
