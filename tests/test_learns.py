"""It learns: a bimodal toy task that a mean-regressing model cannot solve."""

import torch

from mode_policy.envs.toy import MODES, mode_statistics, train_toy


def test_mean_regression_fails_the_criterion():
    goal_idx = torch.randint(0, 2, (100,))
    mean_prediction = torch.zeros(100, 1, 2)  # what an MSE regressor converges to
    fractions, between = mode_statistics(mean_prediction, goal_idx)
    assert between == 1.0 and all(f == 0 for pair in fractions for f in pair)
    one_mode_only = MODES[goal_idx].unsqueeze(1)  # a collapsed (unimodal) policy
    fractions, _ = mode_statistics(one_mode_only, goal_idx)
    assert all(pair[1] == 0 for pair in fractions)


def test_policy_learns_both_modes():
    result = train_toy()  # 800 steps of the tiny preset, ~30 s on one CPU core
    print(
        f"toy: {result.steps} steps in {result.seconds:.1f}s, modes {result.mode_fractions}, "
        f"between {result.between_fraction:.3f}"
    )
    for plus, minus in result.mode_fractions:
        assert plus >= 0.25 and minus >= 0.25
    assert result.between_fraction < 0.05
