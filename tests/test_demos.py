"""Tests for scripted Meta-World demonstration generation (LeRobotDataset v3.0 output)."""

from __future__ import annotations

import numpy as np
import pytest

from mode_policy.data.reader import DatasetReader
from mode_policy.envs.metaworld import (
    FPS,
    INSTRUCTIONS,
    MetaWorldEnv,
    demo_seed,
    eval_seed,
    initial_condition,
    seed_split,
)
from mode_policy.envs.metaworld_demos import (
    DEMO_FEATURES,
    episode_initial_condition,
    generate_demos,
    run_expert_episode,
)
from mode_policy.errors import ConfigError, DataError, SimulatorError

TASKS = ["reach-v3", "drawer-close-v3"]
COLUMNS = [
    "observation.state",
    "action",
    "next.reward",
    "next.success",
    "episode_index",
    "frame_index",
    "task_index",
    "index",
]


def test_run_expert_episode_stops_after_success():
    seed = demo_seed("reach-v3", 0)
    a = run_expert_episode("reach-v3", seed, extra_steps_after_success=5)
    b = run_expert_episode("reach-v3", seed, extra_steps_after_success=5)
    assert a.success and a.success_step > 0
    assert a.length == a.success_step + 5
    f = a.frames
    assert f["observation.state"].shape == (a.length, 39) and f["observation.state"].dtype == np.float32
    assert f["action"].shape == (a.length, 4) and np.abs(f["action"]).max() <= 1.0
    assert f["next.success"].shape == (a.length, 1) and f["next.success"].dtype == bool
    assert not f["next.success"][: a.success_step - 1].any() and f["next.success"][a.success_step - 1, 0]
    np.testing.assert_array_equal(a.initial_condition, initial_condition("reach-v3", seed))
    for key in DEMO_FEATURES:
        np.testing.assert_array_equal(f[key], b.frames[key])


def test_run_expert_episode_failure_has_no_frames():
    r = run_expert_episode("door-open-v3", demo_seed("door-open-v3", 0), max_steps=3)
    assert not r.success and r.frames is None and r.success_step == -1


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("demos")
    kw = dict(tasks=TASKS, episodes_per_task=2, seed=0, max_steps=300, progress=False)
    one = generate_demos(root / "w1", workers=1, **kw)
    again = generate_demos(root / "w1_again", workers=1, **kw)
    two = generate_demos(root / "w2", workers=2, **kw)
    return one, again, two


def test_generated_dataset_contents(datasets):
    ds = DatasetReader(datasets[0])
    assert ds.num_episodes == 4
    assert ds.fps == FPS == 80
    assert ds.episode_tasks == [INSTRUCTIONS[t] for t in TASKS for _ in range(2)]
    assert sorted(ds.tasks) == sorted(INSTRUCTIONS[t] for t in TASKS)
    state, action, success = ds.column("observation.state"), ds.column("action"), ds.column("next.success")
    assert state.shape == (ds.num_frames, 39) and state.dtype == np.float32
    assert action.shape == (ds.num_frames, 4) and np.abs(action).max() <= 1.0
    bounds = ds.episode_bounds
    for i, (extra, (lo, hi)) in enumerate(zip(ds.episode_extra, bounds)):
        task = TASKS[i // 2]
        assert extra["env_name"] == task
        assert seed_split(extra["seed"]) == "demo"
        assert extra["seed"] == demo_seed(task, extra["attempt"], 0)
        ic = episode_initial_condition(extra)
        np.testing.assert_array_equal(ic, initial_condition(task, extra["seed"]))
        ep_success = success[lo:hi].reshape(-1)
        assert ep_success.any()  # every stored episode is a success
        assert hi - lo == extra["success_step"] + 10
        assert ep_success[extra["success_step"] - 1] and not ep_success[: extra["success_step"] - 1].any()
        # The stored first observation is the seeded initial observation.
        np.testing.assert_array_equal(state[lo], MetaWorldEnv(task, seed=extra["seed"]).obs)
    # Evaluation initial conditions never coincide with the demonstrations'.
    for task in TASKS:
        demo_ics = [episode_initial_condition(e) for e in ds.episode_extra if e["env_name"] == task]
        for j in range(5):
            ev = initial_condition(task, eval_seed(task, j))
            assert all(not np.allclose(ev, d) for d in demo_ics)


def test_generation_is_deterministic_across_runs_and_workers(datasets):
    ref = DatasetReader(datasets[0])
    for other_path in datasets[1:]:
        other = DatasetReader(other_path)
        assert other.num_episodes == ref.num_episodes and other.num_frames == ref.num_frames
        assert other.episode_tasks == ref.episode_tasks
        assert other.episode_extra == ref.episode_extra
        np.testing.assert_array_equal(other.episode_bounds, ref.episode_bounds)
        for key in COLUMNS:
            np.testing.assert_array_equal(other.column(key), ref.column(key), err_msg=key)


def test_existing_output_needs_overwrite(tmp_path):
    kw = dict(tasks=["reach-v3"], episodes_per_task=1, max_steps=200, progress=False)
    generate_demos(tmp_path / "d", seed=0, **kw)
    with pytest.raises(DataError, match="pass overwrite=True"):
        generate_demos(tmp_path / "d", seed=1, **kw)
    path = generate_demos(tmp_path / "d", seed=1, overwrite=True, **kw)
    ds = DatasetReader(path)
    assert ds.num_episodes == 1 and ds.episode_extra[0]["seed"] == demo_seed("reach-v3", 0, seed=1)


def test_expert_that_keeps_failing_raises(tmp_path):
    with pytest.raises(SimulatorError, match="door-open-v3"):
        generate_demos(tmp_path / "x", ["door-open-v3"], 1, max_steps=2, max_attempts_per_task=3, progress=False)
    assert not (tmp_path / "x").exists()  # nothing written when generation fails


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        generate_demos(tmp_path / "a", ["no-such-task-v3"], 1, progress=False)
    with pytest.raises(ConfigError, match="episodes_per_task"):
        generate_demos(tmp_path / "b", ["reach-v3"], 0, progress=False)
