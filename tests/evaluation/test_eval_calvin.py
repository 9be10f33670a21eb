"""CALVIN evaluation: scoring, the chain protocol, and evaluate_calvin on a fake simulator
whose oracle solves a known set of subtasks."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from fakes import SOLVABLE, STEPS_TO_SOLVE, ScriptedPolicy

from mode_policy.envs.calvin import VAL_INSTRUCTIONS, get_env_state_for_initial_condition, get_sequences
from mode_policy.errors import ConfigError, SimulatorError
from mode_policy.evaluation import calvin as calvin_eval
from mode_policy.evaluation.calvin import (
    CALVIN_OFFICIAL,
    average_chain_length,
    count_success,
    evaluate_calvin,
    format_chain_success,
    run_chains,
)
from mode_policy.model.config import get_preset
from mode_policy.model.diffusion import SamplingSettings


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


def test_official_settings_preset() -> None:
    """1000 chains, 360 steps per instruction, 5 sampling steps, sigma_min 1.0 (MoDE's
    conf/mode_evaluate.yaml), and they are evaluate_calvin's defaults."""
    assert (CALVIN_OFFICIAL.num_sequences, CALVIN_OFFICIAL.ep_len) == (1000, 360)
    assert (CALVIN_OFFICIAL.num_inference_steps, CALVIN_OFFICIAL.sigma_min) == (5, 1.0)
    defaults = evaluate_calvin.__defaults__ + tuple(evaluate_calvin.__kwdefaults__.values())
    assert {1000, 360, 5, 1.0} <= set(defaults)


def test_sampling_settings_are_passed_with_every_call_not_written_into_the_config(fake_calvin) -> None:
    policy = ScriptedPolicy(np.zeros(7), state_dim=15)
    policy.config = get_preset("tiny", state_dim=15, action_dim=7, num_inference_steps=10, sigma_min=0.001)
    seen = []
    policy.select_action = lambda batch, sampling=None, n_action_steps=None: seen.append(sampling) or torch.zeros(1, 7)
    result = evaluate_calvin(policy, num_sequences=1, ep_len=2, progress=False, env=fake_calvin)
    assert set(seen) == {SamplingSettings(num_inference_steps=5, sigma_min=1.0)}
    assert result.settings["sampling"] == {"num_inference_steps": 5, "sigma_min": 1.0}
    assert (policy.config.num_inference_steps, policy.config.sigma_min) == (10, 0.001)  # never edited
    evaluate_calvin(
        policy, num_sequences=1, ep_len=2, progress=False, env=fake_calvin, num_inference_steps=None, sigma_min=None
    )
    assert seen[-1] is None  # None keeps the policy's own
    with pytest.raises(ConfigError, match=r"sigma_min \(100.0\) < sigma_max"):
        evaluate_calvin(policy, num_sequences=1, progress=False, env=fake_calvin, sigma_min=100.0)
    plain = ScriptedPolicy(np.zeros(7), state_dim=15)  # no sampling fields: nothing to apply
    assert evaluate_calvin(plain, num_sequences=1, ep_len=1, progress=False, env=fake_calvin).settings["sampling"] == {}


def test_env_is_built_with_the_policys_cameras(fake_calvin, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``env``: one env from calvin_env's configs (or the dataset's), with only the
    cameras the policy reads."""
    calls = []
    monkeypatch.setattr(calvin_eval, "make_calvin_env", lambda *a, **k: calls.append((a, k)) or fake_calvin)
    policy = ScriptedPolicy(np.zeros(7), state_dim=15, image_keys=("observation.images.gripper",))
    policy.select_action = lambda batch: torch.zeros(1, 7)
    fake_calvin.get_obs = lambda: {
        "robot_obs": np.zeros(15),
        "scene_obs": np.zeros(24),
        "rgb_obs": {"rgb_gripper": np.zeros((84, 84, 3), np.uint8)},
    }
    result = evaluate_calvin(policy, num_sequences=1, ep_len=1, progress=False, scene="A")
    evaluate_calvin(policy, "/data/task_D_D", num_sequences=1, ep_len=1, progress=False, renderer="tiny")
    assert calls == [
        ((["observation.images.gripper"],), {"scene": "A", "dataset_path": None, "renderer": "egl"}),
        ((["observation.images.gripper"],), {"scene": "D", "dataset_path": "/data/task_D_D", "renderer": "tiny"}),
    ]
    assert result.settings["env"] == "calvin_env scene A"


def test_chain_subsets_play_as_in_the_full_run(fake_calvin) -> None:
    """Chains 7 and 2 alone give the lengths they have in the whole list, with the seeds of
    their official index (what sharding a run needs)."""
    seeds = []
    policy = ScriptedPolicy(np.zeros(7), state_dim=15)
    policy.reset = lambda: seeds.append(torch.initial_seed())
    full = evaluate_calvin(policy, num_sequences=10, ep_len=5, progress=False, env=fake_calvin)
    full_seeds, seeds[:] = list(seeds), []
    part = evaluate_calvin(policy, num_sequences=10, ep_len=5, progress=False, env=fake_calvin, chain_ids=[7, 2])
    sequences = get_sequences(10)
    lengths = {c: next((k for k, t in enumerate(sequences[c][1]) if t not in SOLVABLE), 5) for c in (2, 7)}
    assert part.metrics["chain_length_counts"] == [list(lengths.values()).count(n) for n in range(6)]
    assert part.settings["chain_ids"] == [7, 2] and full.settings["chain_ids"] is None
    assert set(seeds) <= set(full_seeds) and len(set(seeds)) == 2
    with pytest.raises(ConfigError, match="chain_ids"):
        evaluate_calvin(policy, num_sequences=10, progress=False, env=fake_calvin, chain_ids=[10])


def test_argument_errors(fake_calvin) -> None:
    policy = ScriptedPolicy(np.zeros(7), state_dim=15)
    with pytest.raises(ConfigError, match="unknown CALVIN camera key"):
        evaluate_calvin(policy, env=fake_calvin, image_keys=["observation.images.top"])
    bad = ScriptedPolicy(np.zeros(6), state_dim=15)
    with pytest.raises(ConfigError, match="CALVIN needs"):
        evaluate_calvin(bad, num_sequences=1, progress=False, env=fake_calvin)


def test_missing_calvin_env_is_a_simulator_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "calvin_env", None)
    with pytest.raises(SimulatorError, match="install_calvin.sh"):
        evaluate_calvin(ScriptedPolicy(np.zeros(7)), num_sequences=1, progress=False)
