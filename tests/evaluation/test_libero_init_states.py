"""Each LIBERO evaluation rollout starts from its own listed initial state, whatever happened
before it in that env and however fast earlier rollouts finished (the pitfalls of LeRobot
#2375, #2899, #4152: every episode from the same state, an index that never advances, a
sequence that depends on when the policy finishes). Real simulator, state only."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fakes import ScriptedPolicy, needs_libero

import mode_policy.evaluation.libero as libero_eval
from mode_policy.envs.libero import import_libero, load_init_states

SUITE, TASK = "libero_object", 0


class FinishingEnv:
    """A real LIBERO env that records the full sim state right after each ``set_init_state``
    and reports ``done`` after a scripted number of policy steps (the policy "finishes")."""

    def __init__(self, env: Any, log: list[dict], finish_after: dict[int, int], settle: int) -> None:
        self.env, self.log, self.finish_after, self.settle = env, log, finish_after, settle
        self.steps = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)

    def set_init_state(self, state: np.ndarray) -> Any:
        obs = self.env.set_init_state(state)
        self.log.append({"env": id(self), "given": np.array(state), "after": self.env.get_sim_state().copy()})
        self.steps = 0
        return obs

    def step(self, action: np.ndarray) -> Any:
        obs, reward, done, info = self.env.step(action)
        self.steps += 1
        rollout = len([r for r in self.log if r["env"] == id(self)]) - 1
        policy_steps = self.steps - self.settle
        ends_at = self.finish_after[rollout]
        return obs, reward, done or (policy_steps >= 1 and policy_steps >= ends_at), info


MAKE_ENV = libero_eval.make_libero_env


def _run(monkeypatch: pytest.MonkeyPatch, finish_after: dict[int, int], n: int, settle: int) -> tuple[Any, list]:
    log: list[dict] = []
    make = MAKE_ENV
    # finish_after is per env (the k-th rollout an env plays ends after finish_after[k] steps)
    monkeypatch.setattr(
        libero_eval, "make_libero_env", lambda *a, **k: FinishingEnv(make(*a, **k), log, finish_after, settle)
    )
    policy = ScriptedPolicy(np.array([0.6, -0.4, 0.5, 0.0, 0.0, 0.3, 1.0]))  # moves the arm and closes the gripper
    result = libero_eval.evaluate_libero(
        policy, SUITE, n_rollouts_per_task=n, max_steps=7, num_settle_steps=settle, tasks=[TASK], num_envs=2,
        progress=False,
    )  # fmt: skip
    return result, log


@needs_libero
def test_each_rollout_starts_from_its_own_initial_state(monkeypatch: pytest.MonkeyPatch) -> None:
    lib = import_libero()
    init_states = load_init_states(lib, libero_eval._load_suite(lib, SUITE), TASK)
    n, settle = 5, 2
    runs = []
    for finish_after in ({0: 1, 1: 6, 2: 3}, {0: 7, 1: 2, 2: 5}):  # rollouts end at other times
        result, log = _run(monkeypatch, finish_after, n, settle)
        runs.append(log)
        assert len(log) == n  # one start per rollout
        started = []
        for record in log:
            # the state it was given is one of the listed ones, and the sim holds it exactly
            matches = [r for r in range(n) if np.array_equal(record["given"], init_states[r])]
            assert len(matches) == 1, "a rollout started from a state that is not one of the first n listed"
            np.testing.assert_array_equal(record["after"], init_states[matches[0]])
            started.append(matches[0])
        # rollouts 0..n-1, each once, in waves of 2: 0,1 | 2,3 | 4
        assert started == list(range(n))
        (task,) = result.per_task.values()
        assert task.episodes == n and task.successes == n
        # episode lengths follow the scripted finishing times of each env's k-th rollout
        envs = list(dict.fromkeys(r["env"] for r in log))
        k_th = [[r["env"] for r in log[: i + 1]].count(log[i]["env"]) - 1 for i in range(n)]
        assert task.extra["episode_lengths"] == [finish_after[k] for k in k_th]
        assert len(envs) == 2
    # the same rollout -> initial state mapping whatever the finishing times
    assert [[np.array_equal(a["given"], b["given"]) for a, b in zip(*runs)]] == [[True] * n]
    # different initial states really differ (the index advances)
    assert not np.array_equal(init_states[0], init_states[1])
