"""The Frechet distance of ``mugv eval generation`` (FVD) against a float64 scipy reference."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from mugv.evaluation.frechet import frechet_distance, frechet_distance_of, gaussian_stats


def _scipy_reference(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula with scipy's general matrix square root, all float64."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.fixture
def features():
    rng = np.random.default_rng(1234)
    a = rng.normal(size=(96, 12)) @ rng.normal(size=(12, 12)) + 0.3
    b = rng.normal(size=(80, 12)) @ rng.normal(size=(12, 12)) * 0.7 - 0.2
    return a, b


def test_matches_scipy_sqrtm_reference_on_fixed_features(features):
    a, b = features
    ours, ref = frechet_distance_of(a, b), _scipy_reference(a, b)
    assert ref > 1.0  # the two sets really differ
    assert ours == pytest.approx(ref, rel=1e-9, abs=1e-9)


def test_closed_form_of_diagonal_gaussians_and_zero_for_the_same_set(features):
    mu1, mu2 = np.array([1.0, -2.0, 0.5]), np.array([0.0, 1.0, 0.5])
    v1, v2 = np.array([4.0, 1.0, 0.25]), np.array([1.0, 9.0, 0.25])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, 1e-12)
    a, _ = features
    assert abs(frechet_distance_of(a, a)) < 1e-8


def test_rank_deficient_covariances_stay_real_and_match_scipy():
    rng = np.random.default_rng(7)
    a = rng.normal(size=(5, 16))  # 5 samples, 16 dims: singular covariance
    b = rng.normal(size=(6, 16)) + 1.0
    assert frechet_distance_of(a, b) == pytest.approx(_scipy_reference(a, b), rel=1e-6)


def test_bad_features_are_errors():
    with pytest.raises(ValueError, match="at least 2 feature rows"):
        gaussian_stats(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="NaN"):
        gaussian_stats(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
