"""How many seeds and held-out episodes a study needs to resolve a given difference.

A cell's success rate is modelled as ``Y = mu_variant + S + E``: ``S`` the training seed's effect
(variance ``seed_var``), ``E`` the episode sampling of its held-out evaluation (variance
``q / episodes`` with ``q`` the mean per-task Bernoulli variance ``p_t (1 - p_t)``). Both are
estimated from finished cells:

* the pooled variance of seed means within each variant (``s2``, df = sum of seeds - 1 per variant)
  holds both parts;
* the episode part of each cell is estimated from its per-task counts, unbiasedly
  (``p_t (1 - p_t) / (n_t - 1)`` per task, averaged over tasks and divided by their number);
* ``seed_var = max(0, s2 - episode part)``.

A difference ``delta`` between two variants with ``n`` seeds each and ``episodes`` per cell is
resolved (its 95% interval excludes 0 with probability ``power``) when
``delta >= (t(1 - alpha / 2, df) + t(power, df)) * sqrt(2 (seed_var + q / episodes) / n)``,
``df = 2 n - 2`` (the usual two-sample power calculation, with t quantiles because n is small).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from statistics import NormalDist

from .result import CellResult
from .stats import t_quantile


@dataclass(frozen=True)
class VarianceComponents:
    """Seed and episode variance of a cell's success rate, measured on finished cells."""

    seed_var: float
    """Variance of the training seed's effect on a cell's success rate."""
    task_bernoulli: float
    """``q``: mean over tasks of ``p_t (1 - p_t)``; a cell with E episodes adds ``q / E`` of variance."""
    pooled_var: float
    """Pooled within-variant variance of the seed means (seed + episode parts)."""
    df: int
    """Degrees of freedom of ``pooled_var``."""
    episode_var: float
    """The episode part of ``pooled_var`` (at ``episodes`` per cell), from the per-task counts."""
    episodes: float
    """Mean held-out episodes per cell in the cells it came from."""
    mean_success: float

    def cell_var(self, episodes: float) -> float:
        """Variance of one cell's success rate with ``episodes`` held-out episodes."""
        return self.seed_var + self.task_bernoulli / episodes

    def upper(self, level: float = 0.9) -> VarianceComponents:
        """The same with the pooled variance at its one-sided ``level`` upper confidence bound
        (chi-square with ``df``, Wilson-Hilferty), so the seed part is not taken as smaller than the
        cells can tell apart: few cells estimate a variance loosely."""
        k = self.df
        z = NormalDist().inv_cdf(1 - level)
        chi2 = k * (1 - 2 / (9 * k) + z * math.sqrt(2 / (9 * k))) ** 3  # lower quantile of chi2(k)
        pooled = self.pooled_var * k / chi2
        return replace(self, pooled_var=pooled, seed_var=max(0.0, pooled - self.episode_var))


def _episode_var(result: CellResult) -> tuple[float, float]:
    """(variance of the cell's success rate due to its episodes, q of the cell): per-task unbiased."""
    tasks = [(s, n) for s, n in result.per_task.values() if n > 0]
    if not tasks:
        raise ValueError(f"cell {result.variant}/seed{result.seed} has no per-task counts")
    per_task = []
    q_terms = []
    for s, n in tasks:
        p = s / n
        per_task.append(p * (1 - p) / (n - 1) if n > 1 else 0.25)  # one episode: the Bernoulli bound
        q_terms.append(p * (1 - p) * n / (n - 1) if n > 1 else 0.25)
    var = sum(per_task) / len(tasks) ** 2
    return var, sum(q_terms) / len(q_terms)


def variance_components(results: Sequence[CellResult]) -> VarianceComponents:
    """Estimate the seed and episode variance from finished cells (>= 2 seeds of some variant)."""
    by_variant: dict[str, list[CellResult]] = {}
    for r in results:
        by_variant.setdefault(r.variant, []).append(r)
    ss, df = 0.0, 0
    for cells in by_variant.values():
        if len(cells) < 2:
            continue
        means = [c.success_rate for c in cells]
        m = sum(means) / len(means)
        ss += sum((x - m) ** 2 for x in means)
        df += len(means) - 1
    if df == 0:
        raise ValueError("a power analysis needs a variant with at least 2 finished seeds")
    pooled = ss / df
    ep = [_episode_var(r) for r in results]
    episode_var = sum(v for v, _ in ep) / len(ep)
    q = sum(qq for _, qq in ep) / len(ep)
    return VarianceComponents(
        seed_var=max(0.0, pooled - episode_var),
        task_bernoulli=q,
        pooled_var=pooled,
        df=df,
        episode_var=episode_var,
        episodes=sum(r.episodes for r in results) / len(results),
        mean_success=sum(r.success_rate for r in results) / len(results),
    )


def resolvable_difference(
    vc: VarianceComponents, seeds: int, episodes: float, alpha: float = 0.05, power: float = 0.8
) -> float:
    """The smallest true difference that a Welch interval at level 1 - alpha excludes 0 for with
    probability ``power``, with ``seeds`` seeds per variant and ``episodes`` per cell."""
    if seeds < 2:
        raise ValueError("a difference interval needs >= 2 seeds per variant")
    df = 2 * seeds - 2
    mult = t_quantile(1 - alpha / 2, df) + t_quantile(power, df)
    return mult * math.sqrt(2 * vc.cell_var(episodes) / seeds)


def seeds_needed(
    vc: VarianceComponents, delta: float, episodes: float, alpha: float = 0.05, power: float = 0.8, limit: int = 1000
) -> int | None:
    """Fewest seeds per variant that resolve ``delta`` (None: more than ``limit``)."""
    for n in range(2, limit + 1):
        if resolvable_difference(vc, n, episodes, alpha, power) <= delta:
            return n
    return None


def power_table(
    vc: VarianceComponents, delta: float, episode_options: Sequence[int], seed_options: Sequence[int]
) -> dict[str, Mapping]:
    """Seeds needed per episode count, and the difference resolvable per (seeds, episodes)."""
    return {
        "seeds_needed": {e: seeds_needed(vc, delta, e) for e in episode_options},
        "resolvable": {(n, e): resolvable_difference(vc, n, e) for n in seed_options for e in episode_options},
    }


def render_power(
    vc: VarianceComponents, delta: float = 0.05, episode_options: Sequence[int] = (100, 250, 500, 1000)
) -> list[str]:
    """Markdown lines: the measured components and the seeds needed for ``delta`` at 95%, power 0.8."""
    seed_options = (3, 5, 10)
    up = vc.upper()
    table = power_table(vc, delta, episode_options, seed_options)
    table_up = power_table(up, delta, episode_options, seed_options)
    lines = [
        "## Power analysis",
        "",
        f"Measured on these cells (mean success {vc.mean_success:.3f}, {vc.episodes:.0f} episodes per cell): "
        f"pooled within-variant variance of the seed means {vc.pooled_var:.5f} (df {vc.df}); "
        f"episode part at that episode count {vc.episode_var:.5f} "
        f"(mean per-task p(1-p) = {vc.task_bernoulli:.3f}); training-seed part {vc.seed_var:.5f} "
        f"(sd {math.sqrt(vc.seed_var):.3f}). With df {vc.df} that is loose: at its 90% upper bound the pooled "
        f"variance is {up.pooled_var:.5f} and the seed part {up.seed_var:.5f} (sd {math.sqrt(up.seed_var):.3f}); "
        "both are shown.",
        "",
        f"Seeds per variant for a difference of {delta:.2f} to be resolved (95% interval excludes 0 with "
        "probability 0.8), by held-out episodes per cell:",
        "",
        "| episodes per cell | " + " | ".join(str(e) for e in episode_options) + " |",
        "|---" * (len(episode_options) + 1) + "|",
        *(
            f"| seeds needed ({label}) | "
            + " | ".join(str(n) if n is not None else "> 1000" for n in t["seeds_needed"].values())
            + " |"
            for label, t in (("point estimate", table), ("90% upper bound", table_up))
        ),
        "",
        "Smallest resolvable difference (point estimate / 90% upper bound of the variance):",
        "",
        "| seeds \\ episodes | " + " | ".join(str(e) for e in episode_options) + " |",
        "|---" * (len(episode_options) + 1) + "|",
    ]
    for n in seed_options:
        lines.append(
            f"| {n} | "
            + " | ".join(
                f"{table['resolvable'][(n, e)]:.3f} / {table_up['resolvable'][(n, e)]:.3f}" for e in episode_options
            )
            + " |"
        )
    return lines
