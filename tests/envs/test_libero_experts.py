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


def _env(suite: str, task_id: int, cameras: list[str] | None = None, hard_reset: bool = True):
    from mode_policy.envs.libero import import_libero, load_init_states, load_suite, make_libero_env

    lib = import_libero()
    task_suite = load_suite(lib, suite)
    task = task_suite.get_task(task_id)
    bddl = Path(lib.get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
    with contextlib.redirect_stdout(io.StringIO()):
        env = make_libero_env(lib, bddl, cameras or [], 128, 400, hard_reset=hard_reset)
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


@needs_libero
def test_rim_grasp_avoids_the_side_next_to_a_taller_neighbour() -> None:
    """libero_spatial task 3 ("the black bowl on the cookie box"), a soft-reset placement with
    the other bowl standing high right beside it: the rim point the expert descends to has nothing taller
    than the bowl within 5 cm (the side next to it is where the hand stalled on the way down)."""
    from mode_policy.envs.libero import CAMERAS, DUMMY_ACTION
    from mode_policy.envs.libero_demos import demo_seed

    # LIBERO's soft reset makes the scene (such placements are why the demonstrations use the hard one)
    env, _ = _env("libero_spatial", 3, cameras=list(CAMERAS.values()), hard_reset=False)
    try:
        env.seed(demo_seed(3, 41))
        with contextlib.redirect_stdout(io.StringIO()):
            env.reset()
        for _ in range(10):  # the demonstrations' settle steps
            env.step(DUMMY_ACTION.copy())
        expert = LiberoExpert(env)
        scene = expert.scene
        bowl = expert.plan[0].obj
        _, hi = scene.box(bowl)
        center = (scene.box(bowl)[0][:2] + hi[:2]) / 2
        # the placement does have a taller neighbour on one side of the rim
        radius = min(hi[:2] - scene.box(bowl)[0][:2]) / 2
        rims = [center + radius * np.array([np.cos(a), np.sin(a)]) for a in np.arange(8) * np.pi / 4]
        assert any(scene.height_at(p, 0.05, exclude=(bowl,)) > hi[2] + 0.02 for p in rims)
        grasp = expert._grasp_for(expert.plan[0])
        assert scene.height_at(grasp.point[:2], 0.05, exclude=(bowl,)) <= hi[2] + 0.02
    finally:
        env.close()


@needs_libero
def test_grasp_follows_an_object_still_settling() -> None:
    """libero_spatial task 4 ("the black bowl in the top drawer"): a soft-reset placement drops
    the bowl ~10 cm into the drawer after the settle steps; the grasp the hand descends to is planned
    on the settled bowl (below its rim), not where the bowl was when the expert started."""
    from mode_policy.envs.libero import CAMERAS, DUMMY_ACTION
    from mode_policy.envs.libero_demos import demo_seed

    env, _ = _env("libero_spatial", 4, cameras=list(CAMERAS.values()), hard_reset=False)
    try:
        env.seed(demo_seed(4, 1))
        with contextlib.redirect_stdout(io.StringIO()):
            env.reset()
        for _ in range(10):
            env.step(DUMMY_ACTION.copy())
        expert = LiberoExpert(env)
        bowl = expert.plan[0].obj
        top_at_start = expert.scene.box(bowl)[1][2]
        for _ in range(120):
            env.step(np.clip(expert(), -1, 1))
            if expert.phase == "descend":
                break
        assert expert.phase == "descend"
        top = expert.scene.box(bowl)[1][2]
        assert top < top_at_start - 0.05  # it did fall after the expert started
        assert top - 0.03 < expert._grasp.point[2] < top  # and the grasp is on its rim now
    finally:
        env.close()


@needs_libero
def test_a_retried_rim_grasp_takes_another_side() -> None:
    """A bowl (libero_spatial task 4, initial state 0): once a rim point has been grasped without
    lifting the bowl (the retry marks it tried), the next grasp is planned on another rim point."""
    from mode_policy.envs.libero import start_rollout

    env, init_states = _env("libero_spatial", 4)
    try:
        start_rollout(env, init_states[0], 0, 10)
        expert = LiberoExpert(env)
        first = expert._grasp_for(expert.plan[0])
        assert first.rim >= 0  # a rim grasp
        expert._rims_tried.add(first.rim)
        second = expert._grasp_for(expert.plan[0])
        assert second.rim >= 0 and second.rim != first.rim
        assert np.linalg.norm(second.point[:2] - first.point[:2]) > 0.02
    finally:
        env.close()
