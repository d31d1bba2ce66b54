"""The Frechet distance between two Gaussians fitted to feature sets (FVD, FID).

``d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``, in float64. The trace of the matrix
square root is computed as ``sum sqrt(eig(A S2 A))`` with ``A = S1^(1/2)`` (symmetric, from
an eigen-decomposition): ``S1 S2`` is similar to ``A S2 A``, which is symmetric positive
semi-definite, so its eigenvalues are real and non-negative up to rounding (clamped at 0).
This avoids scipy's ``sqrtm`` of a non-symmetric product and its complex round-off.
"""

from __future__ import annotations

import numpy as np


def gaussian_stats(features_ND: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` (float64) of ``N >= 2`` feature rows."""
    f = np.asarray(features_ND, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature rows [N, D], got shape {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError("features hold NaN or infinity")
    return f.mean(axis=0), np.cov(f, rowvar=False, ddof=1).reshape(f.shape[1], f.shape[1])


def _sym_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Squared Frechet distance of N(mu1, sigma1) and N(mu2, sigma2) (float64)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(
            f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}"
        )
    a = _sym_sqrt(s1)
    m = a @ s2 @ a
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def frechet_distance_of(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Frechet distance between the Gaussians fitted to two feature sets ``[N, D]``."""
    return frechet_distance(*gaussian_stats(features_a), *gaussian_stats(features_b))
