"""Scripted LIBERO expert: goal parsing, and its state machine in the real simulator (a short
CI-sized rollout that must grasp and lift the object; the whole episode is a slow test)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest

from mode_policy.envs.libero_experts import PHASES, LiberoExpert, PickPlace, UnsupportedTaskError, plan_task

needs_libero = pytest.mark.skipif(importlib.util.find_spec("libero") is None, reason="`libero` is not installed")


def test_plan_from_goal_predicates() -> None:
    objects = {"alphabet_soup_1", "cream_cheese_1", "basket_1"}
    goal = [["in", "alphabet_soup_1", "basket_1_contain_region"], ["on", "cream_cheese_1", "basket_1"]]
    assert plan_task(goal, objects) == [
        PickPlace("alphabet_soup_1", "basket_1_contain_region", "in"),
        PickPlace("cream_cheese_1", "basket_1", "on"),
    ]
    with pytest.raises(UnsupportedTaskError, match="'turnon flat_stove_1'"):
        plan_task([["turnon", "flat_stove_1"]], objects)
    with pytest.raises(UnsupportedTaskError, match="open"):
        plan_task([["open", "wooden_cabinet_1_middle_region"]], objects)
    with pytest.raises(UnsupportedTaskError):  # a fixture cannot be picked up
        plan_task([["on", "flat_stove_1", "plate_1"]], objects)


def _env(suite: str, task_id: int):
    from mode_policy.envs.libero import import_libero, load_init_states, load_suite, make_libero_env

    lib = import_libero()
    task_suite = load_suite(lib, suite)
    task = task_suite.get_task(task_id)
    bddl = Path(lib.get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
    with contextlib.redirect_stdout(io.StringIO()):
        env = make_libero_env(lib, bddl, [], 128, 400)
    return env, load_init_states(lib, task_suite, task_id)


@needs_libero
def test_expert_grasps_and_lifts_the_object() -> None:
    """libero_object task 0 from its first fixed initial state: within 90 steps the state machine
    goes hover -> descend -> close -> lift and the alphabet soup is off the floor, between the
    fingers."""
    from mode_policy.envs.libero import start_rollout

    env, init_states = _env("libero_object", 0)
    try:
        start_rollout(env, init_states[0], 0, 10)
        expert = LiberoExpert(env)
        assert expert.plan == [PickPlace("alphabet_soup_1", "basket_1_contain_region", "in")]
        scene = expert.scene
        bottom0 = scene.box("alphabet_soup_1")[0][2]
        for _ in range(90):
            env.step(np.clip(expert(), -1, 1))
            if expert.phase == "carry":
                break
        phases = [p for _, p in expert.history]
        assert phases[:4] == list(PHASES[:4]), phases
        lo, hi = scene.box("alphabet_soup_1")
        assert lo[2] > bottom0 + 0.05  # lifted by more than 5 cm
        # held between the fingers: the gripper is neither open nor shut, and above the can
        assert 0.03 < scene.gripper_width < 0.075
        eef = scene.eef_pos
        assert np.linalg.norm(eef[:2] - (lo[:2] + hi[:2]) / 2) < 0.03 and lo[2] < eef[2] < hi[2]
    finally:
        env.close()


@needs_libero
@pytest.mark.slow
def test_expert_completes_object_and_spatial_tasks() -> None:
    """Whole episodes from the first fixed initial state, the suite's step limit (LIBERO's
    done = its goal predicate)."""
    from mode_policy.envs.libero import SUITE_MAX_STEPS, start_rollout

    for suite, task_id in (("libero_object", 0), ("libero_spatial", 0)):
        env, init_states = _env(suite, task_id)
        try:
            start_rollout(env, init_states[0], 0, 10)
            expert = LiberoExpert(env)
            done = False
            for _ in range(SUITE_MAX_STEPS[suite]):
                _, _, done, _ = env.step(np.clip(expert(), -1, 1))
                if done:
                    break
            assert done, (suite, expert.history)
            assert env.check_success()
        finally:
            env.close()
