"""The interval maths of a study: Student-t intervals over seed means, Welch intervals of differences.

Each seed's success rate is the mean over all its held-out episodes (every task), so the spread
of the seed means carries both the training-seed and the episode variation. With n seeds the
95% interval of the mean is ``m +- t(0.975, n-1) * s / sqrt(n)``; the interval of a difference
between two variants is Welch's (unequal variances, Welch-Satterthwaite degrees of freedom).
With a single seed there is no seed spread: the Wilson interval of that seed's episodes is used
(and labelled so). No SciPy: the t quantile comes from integrating the t density.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..evaluation.result import wilson_interval


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    method: str
    """How the interval was computed (shown in the report)."""

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def t_cdf(x: float, df: float) -> float:
    """P(T <= x) for Student's t with ``df`` > 0 degrees of freedom (Simpson's rule on the density,
    after substituting x = tan(u) so that the heavy tails of small df integrate accurately)."""
    if x == 0:
        return 0.5
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def integrand(u: float) -> float:  # density(tan u) * d(tan u)/du
        t = math.tan(u)
        return math.exp(log_norm - (df + 1) / 2 * math.log1p(t * t / df)) * (1 + t * t)

    end, n = math.atan(abs(x)), 400
    h = end / n
    total = integrand(0.0) + integrand(end) + sum((4 if i % 2 else 2) * integrand(i * h) for i in range(1, n))
    half = total * h / 3  # P(0 <= T <= |x|)
    return 0.5 + half if x > 0 else 0.5 - half


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (bisection on :func:`t_cdf`), 0 < p < 1."""
    if not 0 < p < 1:
        raise ValueError(f"p={p} must be in (0, 1)")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


def _mean_var(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    return mean, sum((v - mean) ** 2 for v in values) / (n - 1)


def seed_interval(seed_means: Sequence[float], successes: int, episodes: int, level: float = 0.95) -> Interval:
    """Interval of the mean success over seeds: a t-interval over ``seed_means`` (n >= 2), or with one
    seed the Wilson interval of its ``successes`` out of ``episodes``."""
    n = len(seed_means)
    if n == 0:
        raise ValueError("no seeds")
    if n == 1:
        low, high = wilson_interval(successes, episodes)
        return Interval(seed_means[0], low, high, "Wilson over episodes (1 seed)")
    mean, var = _mean_var(seed_means)
    half = t_quantile(0.5 + level / 2, n - 1) * math.sqrt(var / n)
    return Interval(mean, mean - half, mean + half, f"t over {n} seed means (df {n - 1})")


def difference_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Interval | None:
    """Welch interval of mean(a) - mean(b) over seed means; None unless both have >= 2 seeds."""
    if len(a) < 2 or len(b) < 2:
        return None
    (ma, va), (mb, vb) = _mean_var(a), _mean_var(b)
    sa, sb = va / len(a), vb / len(b)
    se = math.sqrt(sa + sb)
    diff = ma - mb
    if se == 0:
        return Interval(diff, diff, diff, "Welch t (no seed spread)")
    df = (sa + sb) ** 2 / (sa**2 / (len(a) - 1) + sb**2 / (len(b) - 1))
    half = t_quantile(0.5 + level / 2, df) * se
    return Interval(diff, diff - half, diff + half, f"Welch t (df {df:.1f})")


def verdict(ours: Interval | None, paper_delta: float | None) -> str:
    """Does our difference to the reference agree with the paper's? By sign, where our interval
    allows; and by size: whether the paper's difference lies in our interval, or beyond it."""
    if paper_delta is None:
        return "no paper number"
    if ours is None:
        return "needs >= 2 seeds"
    if ours.contains(paper_delta):
        size = " (the paper's difference lies in our interval)"
    else:  # the paper's effect is larger than ours can be when it lies beyond our bound, away from 0
        larger = paper_delta < min(ours.low, 0) or paper_delta > max(ours.high, 0)
        size = f" (the paper's difference lies outside our interval: {'smaller' if larger else 'larger'} here)"
    if not ours.excludes_zero():
        return "cannot tell: our interval holds 0" + size
    if paper_delta == 0 or (ours.mean > 0) == (paper_delta > 0):
        return "agrees" + size
    return "disagrees: opposite sign"
