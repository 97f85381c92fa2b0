"""Interval arithmetic of the comparison: bias-corrected bootstrap limits, Student's t, MOVER.

Kept apart from the bootstrap loop so that each formula is small and tested on its own; the
reasons for each choice are in :mod:`resnext_det.evaluation.bootstrap` and docs/statistics.md.
No scipy (not a dependency): the t distribution goes through the regularised incomplete beta
function, computed by its continued fraction (Lentz's method), which converges in a few dozen
steps for every argument used here.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

__all__ = [
    "bc_interval",
    "bonferroni_confidence",
    "mover",
    "normal_quantile",
    "t_cdf",
    "t_quantile",
    "welch_satterthwaite",
]

_NORMAL = NormalDist()


def normal_quantile(p: float) -> float:
    return _NORMAL.inv_cdf(p)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(x: float, df: float) -> float:
    """P(T <= x) for Student's t with ``df`` (> 0, not necessarily whole) degrees of freedom."""
    if math.isinf(df):
        return _NORMAL.cdf(x)
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + x * x))
    return 1.0 - tail if x > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (bisection on :func:`t_cdf`; 1e-12 absolute)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1); got {p}")
    if math.isinf(df) or df > 1e7:
        return normal_quantile(p)
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


def bc_interval(samples: np.ndarray, estimate: float, confidence: float) -> list[float]:
    """Bias-corrected percentile bootstrap interval (Efron 1981; Efron & Tibshirani 1993, 14.3).

    The percentile interval assumes the bootstrap distribution is centred on the estimate. For AP
    it is not: resampling images shifts AP (upwards on the sets tested here), so the percentile
    interval sits above the point estimate and can miss it. The correction measures that shift as
    ``z0 = Phi^-1(share of resamples below the estimate)`` and reads the percentiles at
    ``Phi(2 z0 -+ z)``. Ties with the estimate count half (identical models give [0, 0]).
    """
    s = np.asarray(samples, dtype=np.float64)
    s = s[~np.isnan(s)]
    if s.size == 0 or estimate is None or not np.isfinite(estimate):
        return [float("nan"), float("nan")]
    share = (np.count_nonzero(s < estimate) + 0.5 * np.count_nonzero(s == estimate)) / s.size
    share = min(max(share, 0.5 / s.size), 1.0 - 0.5 / s.size)
    z0 = normal_quantile(share)
    z = normal_quantile(0.5 + confidence / 2.0)
    lo_q, hi_q = _NORMAL.cdf(2 * z0 - z), _NORMAL.cdf(2 * z0 + z)
    lo, hi = np.percentile(s, [100.0 * lo_q, 100.0 * hi_q])
    return [float(lo), float(hi)]


def welch_satterthwaite(components: list[tuple[float, float]]) -> float:
    """Degrees of freedom of a sum of variance estimates ``[(variance, its df), ...]``
    (Satterthwaite 1946); a component with infinite df adds only to the numerator."""
    total = sum(v for v, _ in components)
    denom = sum(v * v / df for v, df in components if math.isfinite(df) and df > 0)
    if total <= 0 or denom <= 0:
        return math.inf
    return total * total / denom


def mover(estimate: float, image_interval: list[float], run_half_width: float) -> list[float]:
    """Combine the image interval with a symmetric run-level half-width (MOVER: the method of
    variance estimates recovery, Zou & Donner 2008): each side's distances add in quadrature, so
    an asymmetric bootstrap interval keeps its shape and the run term widens both sides."""
    lo, hi = image_interval
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return [float("nan"), float("nan")]
    return [
        float(estimate - math.hypot(estimate - lo, run_half_width)),
        float(estimate + math.hypot(hi - estimate, run_half_width)),
    ]


def bonferroni_confidence(confidence: float, comparisons: int) -> float:
    """The confidence of each of ``comparisons`` intervals for all of them to hold their true
    values together with probability at least ``confidence`` (Bonferroni: the miss rate
    ``1 - confidence`` split evenly among them; it holds whatever their correlation, e.g. several
    models against one shared baseline). 0.95 over 4 comparisons: 0.9875.

    Intervals rather than tests are what the comparison reports, which is why this and not Holm's
    step-down: Holm's gain is in tests, and gives no simultaneous intervals.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1); got {confidence!r}")
    if isinstance(comparisons, bool) or not isinstance(comparisons, int) or comparisons < 1:
        raise ValueError(f"comparisons must be a positive integer; got {comparisons!r}")
    return 1.0 - (1.0 - confidence) / comparisons
