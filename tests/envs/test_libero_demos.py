"""LIBERO demonstrations: frames hold exactly what the evaluation feeds a policy, seeds stay clear
of the evaluation's, and a killed generation resumes to the same dataset."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import mode_policy.envs.libero_demos as demos
from mode_policy.constants import ACTION_KEY, TASK_KEY
from mode_policy.data.convert_libero import features_for
from mode_policy.data.reader import DatasetReader
from mode_policy.envs.libero import CAMERAS, libero_observation
from mode_policy.envs.libero_demos import (
    DEMO_SEED_BASE,
    DemoEpisode,
    demo_seed,
    generate_libero_demos,
    matches_init_state,
    run_demo_episode,
)
from mode_policy.errors import ConfigError, DataError

needs_libero = pytest.mark.skipif(importlib.util.find_spec("libero") is None, reason="`libero` is not installed")


def test_demo_seeds_are_distinct_and_clear_of_evaluation_seeds() -> None:
    seeds = {demo_seed(t, a, s) for t in range(10) for a in range(200) for s in range(3)}
    assert len(seeds) == 10 * 200 * 3 and min(seeds) >= DEMO_SEED_BASE
    with pytest.raises(ConfigError):
        demo_seed(0, 100_000)
    states = np.arange(12.0).reshape(3, 4)
    assert matches_init_state(states[1] + 1e-9, states)
    assert not matches_init_state(states[1] + 1e-3, states)


@needs_libero
def test_frames_have_the_evaluation_keys_and_shapes() -> None:
    """A real episode (rendering env, 3 steps): the recorded frames are the evaluation's batch
    for the same observations, with the converter's feature names and shapes."""
    from mode_policy.envs.libero import image_convention, import_libero, load_init_states, load_suite, make_libero_env

    lib = import_libero()
    suite = load_suite(lib, "libero_object")
    task = suite.get_task(0)
    bddl = Path(lib.get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
    size = 32
    with contextlib.redirect_stdout(io.StringIO()):
        env = make_libero_env(lib, bddl, list(CAMERAS.values()), size, 50)
    try:
        init_states = load_init_states(lib, suite, 0)
        episode = run_demo_episode(
            env, task.language, 0, 0, 0, init_states, max_steps=3, keep_failed_frames=True,
            convention=image_convention(),
        )  # fmt: skip
        assert not episode.success and episode.length == 3 and episode.frames is not None
        frames = episode.frames
        features = features_for((size, size))
        assert sorted(frames) == sorted(features)
        for key, ft in features.items():
            assert frames[key].shape == (3, *ft["shape"]), key
        # the evaluation's batch of the env's current observation: same keys (plus the task)
        obs = env.env._get_observations(force_update=True)
        batch = libero_observation([obs], task.language, list(CAMERAS), None, image_convention())
        assert sorted(k for k in batch if k != TASK_KEY) == sorted(k for k in features if k != ACTION_KEY)
        assert batch[TASK_KEY] == [task.language]
        for key in CAMERAS:
            assert tuple(batch[key].shape[1:]) == (3, size, size)
            assert frames[key].dtype == np.uint8
        assert tuple(batch["observation.state"].shape[1:]) == tuple(features["observation.state"]["shape"])
        # the first frame is the evaluation's view of the settled start (images as the policy sees them)
        first = {k: torch.from_numpy(v[0]).permute(2, 0, 1).float() / 255 for k, v in frames.items() if k in CAMERAS}
        assert all(float(first[k].std()) > 0.01 for k in CAMERAS)  # real pictures, not blank
    finally:
        env.close()


def _fake_attempt(job: tuple) -> dict:
    """Stands in for a simulator episode: attempt a of task t succeeds unless a % 3 == 1."""
    suite, task_id, attempt, seed, size, max_steps, fast, folder = job
    success = attempt % 3 != 1
    if success:
        rng = np.random.default_rng(task_id * 1000 + attempt)
        n = 3 + attempt % 2
        frames = {k: rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8) for k in CAMERAS}
        frames |= {"observation.state": rng.normal(size=(n, 8)).astype(np.float32)}
        frames |= {ACTION_KEY: rng.uniform(-1, 1, (n, 7)).astype(np.float32)}
        demos._save_episode(Path(folder) / demos._part_name(task_id, attempt), DemoEpisode(0, 0, 0, True, n, frames))
    _fake_attempt.calls += 1  # type: ignore[attr-defined]
    if _fake_attempt.calls == _fake_attempt.kill_at:  # type: ignore[attr-defined]
        raise KeyboardInterrupt
    return {"task": task_id, "attempt": attempt, "seed": demo_seed(task_id, attempt, seed), "success": success,
            "length": 3}  # fmt: skip


def _dataset(root: Path) -> tuple[list, list]:
    reader = DatasetReader(root)
    episodes = pq.read_table(next((root / "meta" / "episodes").rglob("*.parquet"))).to_pylist()
    states = [reader.episode(i, ["observation.state"])["observation.state"] for i in range(reader.num_episodes)]
    return [(e["task_id"], e["attempt"], e["tasks"]) for e in episodes], states


@needs_libero
def test_killed_generation_resumes_to_the_same_dataset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(demos, "_run_attempt", _fake_attempt)
    kwargs = dict(tasks=[0, 2], image_size=16, progress=False)
    _fake_attempt.calls, _fake_attempt.kill_at = 0, -1  # type: ignore[attr-defined]
    generate_libero_demos(tmp_path / "whole", "libero_object", 3, **kwargs)
    whole, whole_states = _dataset(tmp_path / "whole")
    # each task keeps its first 3 successful attempts (attempt 1 and 4 fail)
    assert [(t, a) for t, a, _ in whole] == [(0, 0), (0, 2), (0, 3), (2, 0), (2, 2), (2, 3)]
    assert whole[0][2] == ["pick up the alphabet soup and place it in the basket"]
    assert not (tmp_path / ".whole.parts").exists()

    _fake_attempt.calls, _fake_attempt.kill_at = 0, 4  # type: ignore[attr-defined]
    with pytest.raises(KeyboardInterrupt):
        generate_libero_demos(tmp_path / "resumed", "libero_object", 3, **kwargs)
    log = (tmp_path / ".resumed.parts" / "attempts.jsonl").read_text().splitlines()
    assert len(log) == 3 and not (tmp_path / "resumed").exists()
    _fake_attempt.calls, _fake_attempt.kill_at = 0, -1  # type: ignore[attr-defined]
    generate_libero_demos(tmp_path / "resumed", "libero_object", 3, **kwargs)
    assert _fake_attempt.calls == 7 - 3 + 1  # only what the log did not hold (the killed one again)
    resumed, resumed_states = _dataset(tmp_path / "resumed")
    assert resumed == whole
    for a, b in zip(whole_states, resumed_states):
        np.testing.assert_array_equal(a, b)
    summary = json.loads((tmp_path / "resumed" / "meta" / "libero_expert.json").read_text())
    assert summary["per_task"]["0"] == {"attempts": 4, "successes": 3}
    # an existing dataset is not replaced unless asked
    with pytest.raises(DataError, match="not an empty folder"):
        generate_libero_demos(tmp_path / "whole", "libero_object", 3, **kwargs)
    # other settings on top of an unfinished run are refused
    _fake_attempt.calls, _fake_attempt.kill_at = 0, 1  # type: ignore[attr-defined]
    with pytest.raises(KeyboardInterrupt):
        generate_libero_demos(tmp_path / "third", "libero_object", 3, **kwargs)
    with pytest.raises(ConfigError, match="other settings"):
        generate_libero_demos(tmp_path / "third", "libero_object", 3, tasks=[0], image_size=32, progress=False)


@needs_libero
def test_tasks_the_expert_cannot_do_are_refused_before_any_work(tmp_path: Path) -> None:
    from mode_policy.envs.libero_experts import UnsupportedTaskError

    with pytest.raises(UnsupportedTaskError, match="open"):
        generate_libero_demos(tmp_path / "goal", "libero_goal", 1, tasks=[0], progress=False)
    assert not (tmp_path / "goal").exists() and not (tmp_path / ".goal.parts").exists()


@needs_libero
def test_an_attempt_replays_the_same_whatever_ran_before() -> None:
    """Workers reuse one env: attempt 0 played after attempt 1 gives the same placement and
    trajectory as played first, so the dataset does not depend on which worker played what.
    State only, 15 steps, LIBERO's hard reset (what the demonstrations use)."""
    from mode_policy.envs.libero import import_libero, load_init_states, load_suite, make_libero_env

    lib = import_libero()
    suite = load_suite(lib, "libero_spatial")
    task = suite.get_task(0)
    bddl = Path(lib.get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
    init_states = load_init_states(lib, suite, 0)
    with contextlib.redirect_stdout(io.StringIO()):
        env = make_libero_env(lib, bddl, [], 128, 100)
    try:

        def play(attempt: int) -> dict[str, np.ndarray]:
            episode = run_demo_episode(
                env, task.language, 0, attempt, 0, init_states, max_steps=15, image_keys=(), keep_failed_frames=True
            )
            assert episode.frames is not None and episode.seed == demo_seed(0, attempt)
            return episode.frames

        first, other, again = play(0), play(1), play(0)
        assert not np.array_equal(first["observation.state"], other["observation.state"])  # another placement
        for key in first:
            np.testing.assert_array_equal(first[key], again[key])
    finally:
        env.close()


@needs_libero
def test_objects_placed_on_a_fixture_start_on_it() -> None:
    """libero_spatial task 7 places the bowl on the stove. The demonstrations' env (LIBERO's hard
    reset) draws it there for every seed; LIBERO's soft reset draws it about 40 cm away, in the
    air beside the table (why the demonstrations do not use it)."""
    from mode_policy.envs.libero import DUMMY_ACTION, import_libero, load_suite, make_libero_env
    from mode_policy.envs.libero_demos import _worker_env
    from mode_policy.envs.libero_experts import Scene

    def bowl_and_stove(env) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scene = Scene(env)
        lo, hi = scene.box("akita_black_bowl_1")
        return (lo + hi) / 2, *scene.box("flat_stove_1")

    env = _worker_env("libero_spatial", 7, 32, 20, True)[0]
    try:
        for attempt in range(3):
            env.seed(demo_seed(7, attempt))
            with contextlib.redirect_stdout(io.StringIO()):
                env.reset()
            bowl, stove_lo, stove_hi = bowl_and_stove(env)
            assert np.all((stove_lo[:2] - 0.02 <= bowl[:2]) & (bowl[:2] <= stove_hi[:2] + 0.02)), (bowl, stove_lo)
    finally:
        demos._CACHE.clear()
        env.close()
    lib = import_libero()
    task = load_suite(lib, "libero_spatial").get_task(7)
    bddl = Path(lib.get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
    with contextlib.redirect_stdout(io.StringIO()):
        soft = make_libero_env(lib, bddl, [], 32, 20, hard_reset=False)
    try:
        soft.seed(demo_seed(7, 0))
        with contextlib.redirect_stdout(io.StringIO()):
            soft.reset()
        soft.step(DUMMY_ACTION.copy())
        bowl, stove_lo, _ = bowl_and_stove(soft)
        assert bowl[0] < stove_lo[0] - 0.2  # off the stove (the evidence for the choice above)
    finally:
        soft.close()
