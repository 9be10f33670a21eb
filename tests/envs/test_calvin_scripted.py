"""Scripted CALVIN demonstrations without the simulator: the training annotations, chains
restricted to a subset of subtasks by the official generator's rules, the expert's plans on a
kinematic stand-in of scene D, and the recorder's CALVIN layout through our converter."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from fake_playtable import FakePlayTable, StepsOracle

from mode_policy.data.convert_calvin import convert_calvin
from mode_policy.data.reader import DatasetReader
from mode_policy.envs import calvin_record
from mode_policy.envs.calvin import (
    CALVIN_TASKS,
    TASK_CATEGORIES,
    VAL_INSTRUCTIONS,
    check_task_subset,
    get_sequences,
    initial_conditions,
    valid_chain,
)
from mode_policy.envs.calvin_annotations import TRAIN_INSTRUCTIONS
from mode_policy.envs.calvin_scripted import SCRIPTED_TASKS, CalvinExpert
from mode_policy.errors import ConfigError

FIXTURES = Path(__file__).parents[1] / "fixtures" / "calvin"
ARTICULATED = [
    "move_slider_left",
    "move_slider_right",
    "open_drawer",
    "close_drawer",
    "turn_on_lightbulb",
    "turn_off_lightbulb",
    "turn_on_led",
    "turn_off_led",
]


def test_train_instructions_are_the_published_training_annotations() -> None:
    fixture = json.loads((FIXTURES / "annotations.json").read_text())
    assert fixture["commit"] == "fa03f01f19c65920e18cf37398a9ce859274af76"
    training = fixture["files"]["training"]
    assert training["path"] == "calvin_models/conf/annotations/new_playtable.yaml"
    assert {task: list(texts) for task, texts in TRAIN_INSTRUCTIONS.items()} == training["annotations"]
    assert list(TRAIN_INSTRUCTIONS) == CALVIN_TASKS
    assert not {VAL_INSTRUCTIONS[t] for t in CALVIN_TASKS} & {a for texts in TRAIN_INSTRUCTIONS.values() for a in texts}


# ---------------------------------------------------------------------------------- restricted chains


def _official_restricted(num_sequences: int, tasks: list[str], scenes: list[tuple[int, dict]]) -> list:
    """mees/calvin's get_sequences (multistep_sequences.py) with its draws restricted to ``tasks``
    and its scenes to ``scenes`` (index, scene): global np.random seeded by the scene's index,
    ``np.random.choice(tasks, 5, replace=False)`` until valid, then shuffled with seed 0."""
    counts = list(map(len, np.array_split(range(num_sequences), len(scenes))))
    saved = np.random.get_state()
    try:
        results = []
        for (i, scene), count in zip(scenes, counts):
            np.random.seed(i)
            found: list[tuple[str, ...]] = []
            while len(found) < count:
                seq = tuple(str(t) for t in np.random.choice(tasks, size=5, replace=False))
                if valid_chain(scene, seq):
                    found.append(seq)
            results += [(scene, seq) for seq in found]
        np.random.seed(0)
        np.random.shuffle(results)
    finally:
        np.random.set_state(saved)
    return results


def test_restricted_chains_follow_the_official_rules() -> None:
    # red's lift must close every chain (the fifth category), so scenes without red on the table have none
    from mode_policy.envs.calvin import _has_chain

    tasks = [
        t
        for t in CALVIN_TASKS
        if t in ARTICULATED + ["push_red_block_right", "push_red_block_left", "lift_red_block_table"]
    ]
    with_red = [(i, s) for i, s in enumerate(initial_conditions()) if s["red_block"] == "table"]
    assert [(i, s) for i, s in enumerate(initial_conditions()) if _has_chain(s, tasks)] == with_red
    state = np.random.get_state()
    chains = get_sequences(20, tasks)
    assert np.array_equal(np.random.get_state()[1], state[1])  # numpy's global state untouched
    assert chains == _official_restricted(20, tasks, with_red)
    assert chains == get_sequences(20, list(reversed(tasks)))  # the subset is taken in CALVIN's order
    for scene, chain in chains:
        assert scene["red_block"] == "table" and chain[-1] == "lift_red_block_table"
        assert set(chain) <= set(tasks) and valid_chain(scene, chain)
        assert len({TASK_CATEGORIES[t] for t in chain}) == 5
    assert get_sequences(10) == get_sequences(10, CALVIN_TASKS)  # all 34: the official list


def test_task_subset_errors() -> None:
    with pytest.raises(ConfigError, match="unknown CALVIN task"):
        check_task_subset(["open_drawer", "fly"])
    with pytest.raises(ConfigError, match="fewer than 5 task categories"):
        get_sequences(3, ARTICULATED)  # slider, drawer and lights: 3 categories only
    assert check_task_subset(None) == tuple(CALVIN_TASKS)


def test_scripted_subtasks_make_chains_from_every_scene() -> None:
    from mode_policy.envs.calvin import _has_chain

    assert set(ARTICULATED) <= set(SCRIPTED_TASKS) and len(SCRIPTED_TASKS) == 24
    assert all(_has_chain(scene, SCRIPTED_TASKS) for scene in initial_conditions())
    chains = get_sequences(4, SCRIPTED_TASKS)
    assert len(chains) == 4 and all(valid_chain(s, c) and set(c) <= set(SCRIPTED_TASKS) for s, c in chains)


# ---------------------------------------------------------------------------------- the expert


def _play(env: FakePlayTable, expert: CalvinExpert, task: str, limit: int = 400) -> np.ndarray:
    """Run the expert's plan to its end; the TCP positions it went through (T, 3)."""
    expert.start(task)
    path = []
    for _ in range(limit):
        action = expert.act()
        if action is None:
            return np.array(path)
        env.step(action)
        path.append(env.robot.target_pos.copy())
    raise AssertionError(f"{task}: the plan did not end within {limit} steps")


def test_expert_plans_every_subtask_within_bounds() -> None:
    env = FakePlayTable()
    expert = CalvinExpert(env, np.random.default_rng(0))
    for task in SCRIPTED_TASKS:  # FakePlayTable.step asserts the action's range and gripper values
        path = _play(env, expert, task)
        assert 5 < len(path) < 300, task
        assert np.all(path[:, 2] > 0.3), task  # never into the table
    with pytest.raises(ConfigError, match="cannot do 'stack_block'"):
        expert.start("stack_block")


def test_expert_goes_where_the_furniture_is() -> None:
    env = FakePlayTable()
    expert = CalvinExpert(env, jitter=0.0)  # no jitter: exact offsets
    button = np.array([-0.12, -0.12, 0.472])
    path = _play(env, expert, "turn_on_led")
    lowest = path[path[:, 2].argmin()]
    np.testing.assert_allclose(lowest, button - [0, 0, 0.035], atol=1e-6)  # pressed down through the top
    np.testing.assert_allclose(path[-1], button + [0, 0, 0.07], atol=1e-6)  # and back up

    path = _play(env, expert, "open_drawer")  # hooked behind the handle at its height, pulled 17 cm
    np.testing.assert_allclose(path[-1], [0.18, -0.0791 - 0.141 - 0.17, 0.3546], atol=1e-6)
    assert path[-20, 1] > path[-1, 1]

    env.scene_obs[0] = 0.28  # the sliding door is left: its handle is 28 cm further -x
    path = _play(env, expert, "move_slider_right")
    assert path[-1, 0] - path[-30:, 0].min() > 0.15  # pushed towards +x from the handle's left
    np.testing.assert_allclose(path[-1, 1:], [0.01, 0.555], atol=1e-6)


def test_expert_lets_go_of_a_block_before_another_subtask() -> None:
    env = FakePlayTable()
    expert = CalvinExpert(env, jitter=0.0)
    env.robot.gripper_action = -1
    env.robot_obs[6] = 0.04  # closed on a block
    expert.start("open_drawer")
    assert expert.act()[6] == 1.0  # opens first
    expert.start("place_in_drawer")
    assert expert.act()[6] == -1.0  # but keeps it to place it


# ---------------------------------------------------------------------------------- the recorder


def test_recorder_writes_calvin_layout_that_converts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    oracle = StepsOracle(steps=4, never=frozenset({"turn_off_led"}))
    monkeypatch.setattr(calvin_record, "import_calvin_env", lambda: type("M", (), {"Tasks": oracle}))
    tasks = ARTICULATED + ["push_red_block_right", "push_red_block_left", "lift_red_block_table"]
    summary = calvin_record.record_scripted_demos(
        tmp_path / "demos", 1, tasks, seed=3, env=FakePlayTable(), progress=False, max_chains=10
    )
    split = tmp_path / "demos" / "training"
    lang = np.load(split / "lang_annotations" / "auto_lang_ann.npy", allow_pickle=True).item()
    windows, anns, names = lang["info"]["indx"], lang["language"]["ann"], lang["language"]["task"]
    assert summary["short"] == ["turn_off_led"] and summary["per_task"]["turn_off_led"]["successes"] == 0
    assert summary["per_task"]["turn_off_led"]["attempts"] > 0
    counts = Counter(names)
    assert summary["chains"] == 10 and sum(counts.values()) > 10 and "turn_off_led" not in counts
    assert all(e - s + 1 == 4 for s, e in windows)  # the frames up to the oracle's success, inclusive
    assert [s for s, _ in windows] == [4 * k for k in range(len(windows))]  # failed frames are dropped
    assert all(a in TRAIN_INSTRUCTIONS[t] for a, t in zip(anns, names))
    chains = np.load(split / "ep_start_end_ids.npy")
    assert chains[0, 0] == 0 and chains[-1, 1] == 4 * len(windows) - 1
    assert json.loads((split / "scripted_demos.json").read_text())["windows"] == len(windows)
    frame = np.load(split / "episode_0000001.npz")
    assert sorted(frame.files) == ["actions", "rel_actions", "robot_obs", "scene_obs"]  # physics only
    nxt = np.load(split / "episode_0000002.npz")
    np.testing.assert_allclose(frame["actions"][:3], nxt["robot_obs"][:3])  # absolute = the TCP target it set

    ds = DatasetReader(convert_calvin(split, tmp_path / "ds", progress=False, scene_in_state=True))
    assert ds.num_episodes == len(windows) and ds.episode_tasks == anns
    assert ds.features["observation.state"]["shape"] == [39]
    assert not [k for k in ds.features if k.startswith("observation.images")]
    ep = ds.episode(0)
    np.testing.assert_allclose(ep["observation.state"][:, 15:], ep["observation.environment_state"])


# ---------------------------------------------------------------------------------- the real simulator


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("calvin_env") is None, reason="calvin_env is not installed")
def test_real_expert_chains_and_recording(tmp_path: Path) -> None:
    """In calvin_env (physics only): the expert completes restricted chains through the
    evaluation loop, and one recorded chain converts."""
    from mode_policy.envs.calvin_scripted import ExpertPolicy
    from mode_policy.envs.calvin_sim import make_calvin_env
    from mode_policy.evaluation.calvin import evaluate_calvin

    env = make_calvin_env([])
    result = evaluate_calvin(ExpertPolicy(env), num_sequences=2, tasks=SCRIPTED_TASKS, env=env, progress=False)
    assert result.metrics["avg_len"] >= 4
    summary = calvin_record.record_scripted_demos(
        tmp_path / "demos", 1, SCRIPTED_TASKS, env=env, max_chains=1, progress=False
    )
    assert summary["chains"] == 1 and summary["windows"] >= 4
    ds = DatasetReader(convert_calvin(tmp_path / "demos" / "training", tmp_path / "ds", progress=False))
    assert ds.num_episodes == summary["windows"] and ds.features["observation.state"]["shape"] == [15]


def test_demos_command_records_converts_and_reuses_the_recording(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``mode-policy demos --env calvin`` records the CALVIN layout beside the dataset, converts
    it (scene in the state by default), and a second conversion reuses a matching recording
    instead of playing the chains again; a different seed is refused without --overwrite."""
    from mode_policy.cli import main as cli_main

    oracle = StepsOracle(steps=4)
    monkeypatch.setattr(calvin_record, "import_calvin_env", lambda: type("M", (), {"Tasks": oracle}))
    monkeypatch.setattr(calvin_record, "make_calvin_env", lambda *a, **k: FakePlayTable())
    tasks = ",".join(ARTICULATED + ["push_red_block_right", "push_red_block_left", "lift_red_block_table"])
    args = ["demos", "--env", "calvin", "--calvin_tasks", tasks, "--episodes", "2", "--seed", "5"]
    assert cli_main([*args, "--out", str(tmp_path / "ds")]) == 0
    split = tmp_path / ".ds.calvin" / "training"
    summary = json.loads((split / "scripted_demos.json").read_text())
    assert summary["seed"] == 5 and summary["tasks"] == tasks.split(",") and not summary["short"]
    ds = DatasetReader(tmp_path / "ds")
    assert ds.num_episodes == summary["windows"] >= 8 and ds.features["observation.state"]["shape"] == [39]

    def no_recording(*a: object, **k: object) -> None:
        raise AssertionError("the matching recording should have been reused")

    monkeypatch.setattr(calvin_record, "make_calvin_env", no_recording)
    again = [*args, "--out", str(tmp_path / "ds2"), "--calvin_split", str(tmp_path / ".ds.calvin")]
    assert cli_main([*again, "--calvin_scene_in_state", "false"]) == 0
    assert "reusing the CALVIN recording" in capsys.readouterr().out
    ds2 = DatasetReader(tmp_path / "ds2")
    assert ds2.num_episodes == ds.num_episodes and ds2.features["observation.state"]["shape"] == [15]

    other_seed = [a if a != "5" else "6" for a in args]
    split_dir = str(tmp_path / ".ds.calvin")
    assert cli_main([*other_seed, "--out", str(tmp_path / "ds3"), "--calvin_split", split_dir]) == 2
    assert "holds another recording" in capsys.readouterr().err


def test_recorder_refuses_subtasks_that_make_no_chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four categories cannot make a chain of five: a clear error, not an endless search."""
    monkeypatch.setattr(calvin_record, "import_calvin_env", lambda: type("M", (), {"Tasks": StepsOracle(steps=4)}))
    with pytest.raises(ConfigError, match="fewer than 5 task categories"):
        calvin_record.record_scripted_demos(tmp_path / "d", 1, ARTICULATED[:4], env=FakePlayTable(), progress=False)
    assert not (tmp_path / "d").exists()
