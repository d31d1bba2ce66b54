"""Post-hoc EMA with power-function profiles (Karras et al., EDM2, 2024).

A power-function EMA with exponent ``gamma`` updates, at training step ``t = 1, 2, ...``,
``ema_t = beta_t ema_{t-1} + (1 - beta_t) theta_t`` with ``beta_t = (1 - 1/t)^(gamma + 1)``.
Unrolled, ``ema_t`` weights the parameters ``theta_tau`` of step ``tau`` by
``(tau^(gamma+1) - (tau-1)^(gamma+1)) / t^(gamma+1)``: the integral over ``[tau-1, tau]`` of
the continuous profile ``p_{t,gamma}(s) = (gamma+1) s^gamma / t^(gamma+1)`` on ``[0, t]``.
Its relative width is ``sigma_rel = sqrt((gamma+1) / ((gamma+2)^2 (gamma+3)))``.

Training keeps two such EMAs (e.g. sigma_rel 0.05 and 0.10) and saves snapshots of both.
Afterwards the EMA of any ``(t, sigma_rel)`` is approximated by the least-squares projection
of its profile onto the stored snapshots' profiles, using the closed-form inner product

    <p_{a}, p_{b}> = (ga+1)(gb+1) min(ta,tb)^(ga+gb+1) / ((ga+gb+1) ta^(ga+1) tb^(gb+1)),

then the weights are normalised to sum 1 and the snapshots averaged with them (streamed
tensor by tensor in fp32, see :mod:`mugv_align.snapshots`).
"""

from __future__ import annotations

import math

import numpy as np


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """Exponent ``gamma`` of the power profile of relative width ``sigma_rel``: the real
    root > -1 of ``gamma^3 + 7 gamma^2 + (16 - 1/s^2) gamma + (12 - 1/s^2) = 0``."""
    if not 0.0 < sigma_rel < 0.28:  # gamma -> -1 gives sigma_rel -> sqrt(1/... ) ~ 0.2887
        raise ValueError(f"sigma_rel={sigma_rel} must be in (0, 0.28)")
    s2 = 1.0 / sigma_rel**2
    roots = np.roots([1.0, 7.0, 16.0 - s2, 12.0 - s2])
    real = [r.real for r in roots if abs(r.imag) < 1e-9 and r.real > -1]
    if not real:
        raise ValueError(f"no power-function EMA has sigma_rel={sigma_rel}")
    return float(max(real))


def gamma_to_sigma_rel(gamma: float) -> float:
    """Relative standard deviation of the power profile with exponent ``gamma``."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def power_beta(t: int, gamma: float) -> float:
    """EMA decay at step ``t >= 1``: ``(1 - 1/t)^(gamma+1)`` (0 at t = 1: the EMA starts at
    the first step's parameters)."""
    if t < 1:
        raise ValueError(f"power EMA step t={t} must be >= 1")
    return (1.0 - 1.0 / t) ** (gamma + 1.0)


def profile_inner(
    t_a: np.ndarray, gamma_a: np.ndarray, t_b: np.ndarray, gamma_b: np.ndarray
) -> np.ndarray:
    """Closed-form inner products ``<p_{t_a,gamma_a}, p_{t_b,gamma_b}>`` (broadcasting),
    float64, evaluated in log space for large t."""
    t_a, g_a = np.asarray(t_a, np.float64), np.asarray(gamma_a, np.float64)
    t_b, g_b = np.asarray(t_b, np.float64), np.asarray(gamma_b, np.float64)
    t_min = np.minimum(t_a, t_b)
    log = (
        np.log(g_a + 1)
        + np.log(g_b + 1)
        + (g_a + g_b + 1) * np.log(t_min)
        - np.log(g_a + g_b + 1)
        - (g_a + 1) * np.log(t_a)
        - (g_b + 1) * np.log(t_b)
    )
    return np.exp(log)


def solve_weights(
    snap_t: list[float],
    snap_gamma: list[float],
    target_t: float,
    target_gamma: float,
) -> np.ndarray:
    """Weights of the snapshots whose weighted sum best approximates (least squares in the
    profile space) the target profile, normalised to sum 1."""
    if not snap_t:
        raise ValueError("no EMA snapshots to reconstruct from")
    ts, gs = np.asarray(snap_t, np.float64), np.asarray(snap_gamma, np.float64)
    gram = profile_inner(ts[:, None], gs[:, None], ts[None, :], gs[None, :])
    rhs = profile_inner(ts, gs, np.float64(target_t), np.float64(target_gamma))
    x = np.linalg.lstsq(gram, rhs, rcond=None)[0]
    total = x.sum()
    if not np.isfinite(total) or abs(total) < 1e-12:
        raise ValueError(f"reconstruction weights of t={target_t} are degenerate: {x}")
    return x / total


def discrete_profile(t: int, gamma: float) -> np.ndarray:
    """Weights ``[t]`` that ``ema_t`` gives ``theta_1..theta_t`` (float64, sum 1)."""
    tau = np.arange(1, t + 1, dtype=np.float64)
    return (tau ** (gamma + 1) - (tau - 1) ** (gamma + 1)) / float(t) ** (gamma + 1)
