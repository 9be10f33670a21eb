"""CALVIN evaluation: scoring, the chain protocol, and evaluate_calvin on a fake simulator
whose oracle solves a known set of subtasks."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from fakes import SOLVABLE, STEPS_TO_SOLVE, ScriptedPolicy

from mode_policy.envs.calvin import VAL_INSTRUCTIONS, get_env_state_for_initial_condition, get_sequences
from mode_policy.errors import ConfigError, SimulatorError
from mode_policy.evaluation.calvin import (
    average_chain_length, count_success, evaluate_calvin, format_chain_success, run_chains,
)


def test_scoring() -> None:
    lengths = [0, 1, 2, 5, 5, 3]
    assert count_success(lengths) == pytest.approx([5 / 6, 4 / 6, 3 / 6, 2 / 6, 2 / 6])
    assert average_chain_length(lengths) == pytest.approx(16 / 6)
    assert count_success([5] * 4) == [1.0] * 5 and average_chain_length([0, 0]) == 0.0
    with pytest.raises(ValueError):
        count_success([])


def test_chain_protocol_with_scripted_outcomes() -> None:
    """Chain c's policy solves its first (c % 6) tasks: the next instruction comes only after
    a success, a chain stops at its first failure, and every chain starts with a reset."""
    sequences = get_sequences(10)
    resets, attempts = [], []

    def reset(c, condition):
        resets.append((c, dict(condition)))

    def attempt(c, task):
        attempts.append((c, task))
        return sequences[c][1].index(task) < c % 6

    lengths = run_chains(sequences, reset, attempt)
    assert lengths == [min(c % 6, 5) for c in range(10)]
    assert resets == [(c, sequences[c][0]) for c in range(10)]
    expected = [(c, sequences[c][1][k]) for c in range(10) for k in range(min(c % 6 + 1, 5))]
    assert attempts == expected
    assert average_chain_length(lengths) == pytest.approx(np.mean([0, 1, 2, 3, 4, 5, 0, 1, 2, 3]))


def test_evaluate_calvin_on_a_fake_simulator(calvin_result, fake_calvin) -> None:
    result, policy = calvin_result
    sequences = get_sequences(10)
    lengths, attempted = [], []
    for _, chain in sequences:  # the protocol by hand: solvable subtasks succeed until the first other one
        done = next((k for k, task in enumerate(chain) if task not in SOLVABLE), len(chain))
        lengths.append(done)
        attempted += chain[: min(done + 1, len(chain))]
    assert result.env == "calvin"
    assert result.metrics["avg_len"] == pytest.approx(np.mean(lengths))
    assert result.metrics["chain_success"] == pytest.approx(count_success(lengths))
    assert result.metrics["chain_length_counts"] == [lengths.count(n) for n in range(6)]
    assert {t: r.episodes for t, r in result.per_task.items()} == {t: attempted.count(t) for t in set(attempted)}
    for task, r in result.per_task.items():
        assert r.successes == (r.episodes if task in SOLVABLE else 0)
        assert r.instruction == VAL_INSTRUCTIONS[task] and r.wall_s >= 0
    assert result.overall.episodes == len(attempted) and result.overall.successes == sum(lengths)
    assert policy.resets == len(attempted)  # once per instruction
    solved_steps = STEPS_TO_SOLVE * sum(lengths)
    failed_steps = 5 * sum(1 for n in lengths if n < 5)  # ep_len=5 steps per failed attempt
    assert len(policy.batches) == solved_steps + failed_steps
    assert [b["task"] for b in policy.batches[:1]] == [[VAL_INSTRUCTIONS[sequences[0][1][0]]]]
    assert len(fake_calvin.resets) == 10  # one reset per chain, from its initial scene
    for (robot, scene), (condition, _) in zip(fake_calvin.resets, sequences):
        want_robot, want_scene = get_env_state_for_initial_condition(condition)
        np.testing.assert_array_equal(robot, want_robot)
        np.testing.assert_array_equal(scene, want_scene)
    assert format_chain_success(result).startswith(f"avg. len {np.mean(lengths):.3f}   success at 1: ")


def test_argument_errors(fake_calvin) -> None:
    policy = ScriptedPolicy(np.zeros(7), state_dim=15)
    with pytest.raises(ConfigError, match="unknown CALVIN camera key"):
        evaluate_calvin(policy, env=fake_calvin, image_keys=["observation.images.top"])
    with pytest.raises(ConfigError, match="pass dataset_path"):
        evaluate_calvin(policy, progress=False)
    bad = ScriptedPolicy(np.zeros(6), state_dim=15)
    with pytest.raises(ConfigError, match="CALVIN needs"):
        evaluate_calvin(bad, num_sequences=1, progress=False, env=fake_calvin)


@pytest.mark.skipif(importlib.util.find_spec("calvin_env") is not None, reason="calvin_env is installed")
def test_missing_calvin_env_is_a_simulator_error() -> None:
    with pytest.raises(SimulatorError, match="calvin_env"):
        evaluate_calvin(ScriptedPolicy(np.zeros(7)), "/nonexistent/dataset", num_sequences=1, progress=False)
