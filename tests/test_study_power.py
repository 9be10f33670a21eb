"""The power analysis of a study: variance components recovered from simulated cells, and the
seeds-needed arithmetic against the closed-form normal approximation."""

from __future__ import annotations

import math
import random
from statistics import NormalDist

import pytest

from mode_policy.study.power import render_power, resolvable_difference, seeds_needed, variance_components
from mode_policy.study.result import CellResult


def simulated_cells(seed_sd: float, variants: int, seeds: int, tasks: int, per_task: int, rng: random.Random):
    """Cells whose success rate is task base rate + the seed's shift, each episode a Bernoulli draw."""
    base = [rng.uniform(0.2, 0.9) for _ in range(tasks)]
    cells = []
    for v in range(variants):
        for s in range(seeds):
            shift = rng.gauss(0.0, seed_sd)
            per = {}
            for t, p in enumerate(base):
                q = min(1.0, max(0.0, p + shift))
                per[f"task{t}"] = [sum(rng.random() < q for _ in range(per_task)), per_task]
            hits = sum(h for h, _ in per.values())
            cells.append(CellResult(f"v{v}", s, {}, hits, tasks * per_task, per, {}, 0.0, 0.0))
    return cells


def test_variance_components_recover_the_seed_spread():
    rng = random.Random(0)
    cells = simulated_cells(seed_sd=0.05, variants=40, seeds=4, tasks=20, per_task=10, rng=rng)
    vc = variance_components(cells)
    assert math.sqrt(vc.seed_var) == pytest.approx(0.05, rel=0.2)
    # episodes only: the seed part is estimated near zero, not at the episode noise
    flat = variance_components(simulated_cells(0.0, 40, 4, 20, 10, random.Random(1)))
    assert flat.seed_var < 0.0004  # sd < 0.02, while the episode sd per cell is ~0.03
    assert flat.episode_var == pytest.approx(flat.pooled_var, rel=0.3)


def test_upper_bound_is_larger_and_needs_more_seeds():
    vc = variance_components(simulated_cells(0.03, 5, 3, 50, 2, random.Random(2)))
    up = vc.upper()
    assert up.pooled_var > vc.pooled_var and up.seed_var >= vc.seed_var
    assert seeds_needed(up, 0.05, 500) >= seeds_needed(vc, 0.05, 500)


def test_resolvable_difference_matches_the_normal_formula_for_many_seeds():
    vc = variance_components(simulated_cells(0.04, 10, 3, 50, 4, random.Random(3)))
    n, e = 400, 500
    z = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.8)
    expected = z * math.sqrt(2 * (vc.seed_var + vc.task_bernoulli / e) / n)
    assert resolvable_difference(vc, n, e) == pytest.approx(expected, rel=0.01)
    # more seeds or more episodes never make it harder; the answer is the first n that works
    need = seeds_needed(vc, 0.05, e)
    assert resolvable_difference(vc, need, e) <= 0.05 < resolvable_difference(vc, need - 1, e)
    assert seeds_needed(vc, 0.05, 1000) <= need


def test_needs_two_seeds_of_a_variant():
    single = simulated_cells(0.03, 5, 1, 10, 2, random.Random(4))
    with pytest.raises(ValueError, match="at least 2 finished seeds"):
        variance_components(single)
    lines = "\n".join(render_power(variance_components(simulated_cells(0.03, 3, 3, 10, 2, random.Random(5)))))
    assert "seeds needed (point estimate)" in lines and "90% upper bound" in lines
