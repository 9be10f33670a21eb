"""CALVIN wrapper logic that needs no simulator: task tables, the published validation
instructions, chain generation (the official list), initial scene states, observation and
action mapping. Building the simulator is tested in test_calvin_sim.py.
The protocol loop and scoring are tested in tests/evaluation/test_eval_calvin.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mode_policy.envs.calvin import (
    CALVIN_TASKS,
    NUM_SEQUENCES,
    TASK_CATEGORIES,
    TASK_ORACLE_SPEC,
    VAL_INSTRUCTIONS,
    calvin_observation,
    fnv1_32,
    get_env_state_for_initial_condition,
    get_sequences,
    initial_conditions,
    to_env_action,
    valid_chain,
)
from mode_policy.errors import ConfigError

FIXTURES = Path(__file__).parents[1] / "fixtures" / "calvin"

# The official calvin_agent get_sequences(10), computed with the official algorithm.
# (red, blue, pink block placement, tasks); led/lightbulb 0, slider right, drawer closed for all ten.
OFFICIAL_10 = [
    (
        "table",
        "slider_right",
        "table",
        "turn_on_led push_pink_block_left lift_pink_block_table stack_block move_slider_left",
    ),
    (
        "slider_right",
        "slider_left",
        "table",
        "lift_blue_block_slider place_in_slider turn_on_led open_drawer rotate_pink_block_right",
    ),
    (
        "table",
        "slider_left",
        "table",
        "move_slider_left open_drawer turn_on_lightbulb rotate_red_block_right lift_pink_block_table",
    ),
    (
        "slider_left",
        "table",
        "table",
        "lift_blue_block_table place_in_slider turn_on_lightbulb push_pink_block_right open_drawer",
    ),
    (
        "table",
        "table",
        "slider_left",
        "push_blue_block_right open_drawer turn_on_led lift_blue_block_table place_in_drawer",
    ),
    (
        "slider_right",
        "table",
        "table",
        "rotate_blue_block_right lift_blue_block_table place_in_slider turn_on_lightbulb open_drawer",
    ),
    (
        "slider_right",
        "table",
        "slider_left",
        "push_blue_block_left lift_blue_block_table place_in_slider open_drawer move_slider_left",
    ),
    (
        "table",
        "slider_right",
        "slider_left",
        "push_red_block_left open_drawer lift_pink_block_slider place_in_drawer lift_red_block_table",
    ),
    (
        "table",
        "table",
        "slider_right",
        "open_drawer turn_on_lightbulb move_slider_left rotate_red_block_left lift_red_block_table",
    ),
    (
        "table",
        "slider_left",
        "slider_right",
        "open_drawer turn_on_led rotate_red_block_left lift_blue_block_slider place_in_drawer",
    ),
]
OFFICIAL_1000_SHA256 = "4606e5b70781aa67002f82bfd899cc5cd7ab8b0bf90625469ccd9716dffb97f5"


# ---------------------------------------------------------------------------------- tables


def test_task_tables() -> None:
    assert len(CALVIN_TASKS) == 34
    assert CALVIN_TASKS[:3] == ["rotate_red_block_right", "rotate_red_block_left", "rotate_blue_block_right"]
    assert CALVIN_TASKS[-5:] == [
        "turn_on_lightbulb",
        "turn_off_lightbulb",
        "turn_on_led",
        "turn_off_led",
        "push_into_drawer",
    ]
    for table in (TASK_CATEGORIES, TASK_ORACLE_SPEC, VAL_INSTRUCTIONS):
        assert set(table) == set(CALVIN_TASKS)
    assert TASK_ORACLE_SPEC["push_blue_block_left"] == ["push_object", "block_blue", -0.1, 0]
    assert TASK_ORACLE_SPEC["lift_red_block_slider"] == ["lift_object", "block_red", 0.03, "table", "plank_link"]
    assert TASK_ORACLE_SPEC["rotate_pink_block_right"] == ["rotate_object", "block_pink", -60]
    assert NUM_SEQUENCES == 1000


def test_initial_conditions() -> None:
    scenes = initial_conditions()
    assert len(scenes) == 192
    assert len({tuple(s.items()) for s in scenes}) == 192
    for s in scenes:
        blocks = [s["red_block"], s["blue_block"], s["pink_block"]]
        assert blocks.count("table") in (1, 2)
        assert blocks.count("slider_right") <= 1 and blocks.count("slider_left") <= 1
        assert s["grasped"] == 0


def test_valid_chain_rules() -> None:
    scene = {
        "led": 0,
        "lightbulb": 0,
        "slider": "right",
        "drawer": "closed",
        "red_block": "table",
        "blue_block": "table",
        "pink_block": "slider_left",
        "grasped": 0,
    }
    chain = ["open_drawer", "lift_red_block_table", "place_in_drawer", "turn_on_led", "move_slider_left"]
    assert valid_chain(scene, chain)
    assert not valid_chain(scene, ["close_drawer", "turn_on_led"])  # drawer is closed already
    assert not valid_chain(scene, ["turn_on_led", "turn_on_lightbulb"])  # same category (lights)
    assert not valid_chain(scene, ["lift_red_block_table", "turn_on_led"])  # holding a block
    assert valid_chain(scene, ["lift_pink_block_slider"])  # pink sits in the left spot, slider is right
    assert not valid_chain(scene, ["move_slider_left", "lift_pink_block_slider"])  # now covered by the door
    assert not valid_chain(scene, ["open_drawer", "push_into_drawer"])  # two blocks on the table: ambiguous


def test_instructions_are_the_published_validation_annotations() -> None:
    """Each instruction equals the first (only) annotation of its task in mees/calvin's
    new_playtable_validation.yaml, as stored in tests/fixtures/calvin/annotations.json (with the
    commit and the blob id git lists for the file), none is a training annotation."""
    fixture = json.loads((FIXTURES / "annotations.json").read_text())
    assert fixture["repository"] == "mees/calvin"
    assert fixture["commit"] == "fa03f01f19c65920e18cf37398a9ce859274af76"
    validation, training = fixture["files"]["validation"], fixture["files"]["training"]
    assert validation["path"] == "calvin_models/conf/annotations/new_playtable_validation.yaml"
    assert validation["blob"] == "31d8285a8ebc3702026ddcc09dd666f063122a5f"
    published = validation["annotations"]
    assert sorted(published) == sorted(CALVIN_TASKS)
    assert all(len(texts) == 1 for texts in published.values())
    assert VAL_INSTRUCTIONS == {task: texts[0] for task, texts in published.items()}
    assert VAL_INSTRUCTIONS["lift_red_block_drawer"] == "Take the red block from the drawer"
    for task, text in VAL_INSTRUCTIONS.items():
        assert text not in training["annotations"][task]


# ---------------------------------------------------------------------------------- chains


def test_sequences_match_official_and_are_reproducible() -> None:
    state = np.random.get_state()
    chains = get_sequences(10)
    after = np.random.get_state()
    assert state[0] == after[0] and np.array_equal(state[1], after[1]) and state[2:] == after[2:]
    assert [(c["red_block"], c["blue_block"], c["pink_block"], " ".join(t)) for c, t in chains] == OFFICIAL_10
    assert all(c["led"] == 0 and c["slider"] == "right" and c["drawer"] == "closed" for c, _ in chains)
    assert get_sequences(10) == chains  # cached and deterministic
    for condition, tasks in chains:
        assert len(tasks) == 5 and valid_chain(condition, tasks)
        assert len({TASK_CATEGORIES[t] for t in tasks}) == 5
    chains[0][0]["led"] = 1  # callers get copies
    assert get_sequences(10)[0][0]["led"] == 0
    with pytest.raises(ConfigError):
        get_sequences(0)


@pytest.mark.slow
def test_full_sequence_list_matches_official() -> None:
    """All 1000 chains (about 20 s): the digest of the official get_sequences(1000)."""
    chains = get_sequences(1000)
    blob = json.dumps([[sorted(c.items()), list(t)] for c, t in chains]).encode()
    assert hashlib.sha256(blob).hexdigest() == OFFICIAL_1000_SHA256
    assert list(chains[0][1]) == [
        "rotate_blue_block_right",
        "move_slider_right",
        "lift_red_block_slider",
        "place_in_slider",
        "turn_off_lightbulb",
    ]


# ---------------------------------------------------------------------------------- initial states


def test_fnv1_32_matches_pyhash_vectors() -> None:
    assert fnv1_32(b"test") == 3698262380
    assert fnv1_32("test".encode("utf-16-le")) == 3910690890  # pyhash hashes str as UTF-16-LE
    assert fnv1_32(b"hello world") == 2805756500


def test_env_state_for_initial_condition() -> None:
    cond = {
        "led": 1,
        "lightbulb": 1,
        "slider": "left",
        "drawer": "open",
        "red_block": "slider_right",
        "blue_block": "table",
        "pink_block": "table",
        "grasped": 0,
    }
    robot, scene = get_env_state_for_initial_condition(cond)
    assert robot.shape == (15,) and scene.shape == (24,)
    assert robot[-1] == 1.0  # gripper open
    assert (scene[0], scene[1], scene[3], scene[4], scene[5]) == (0.28, 0.22, 0.088, 1.0, 1.0)
    np.testing.assert_allclose(scene[6:9], [7.03416330e-02, 9.24044687e-02, 4.60990009e-01])  # right spot
    table = {(5.00000896e-02, -1.20000177e-01), (2.29995412e-01, -1.19995140e-01)}
    placed = {tuple(np.round(scene[12:14], 9)), tuple(np.round(scene[18:20], 9))}
    assert placed == {tuple(np.round(t, 9)) for t in table}  # blue and pink on the two table spots
    for yaw in scene[[11, 17, 23]]:
        assert np.pi / 2 - np.pi / 8 <= yaw <= np.pi / 2 + np.pi / 8
    # deterministic, and the dict's key order does not matter
    again = get_env_state_for_initial_condition(dict(reversed(list(cond.items()))))
    np.testing.assert_array_equal(again[1], scene)
    other = get_env_state_for_initial_condition({**cond, "led": 0})[1]
    assert other[5] == 0.0 and not np.allclose(other[[11, 17, 23]], scene[[11, 17, 23]])

    closed = get_env_state_for_initial_condition({**cond, "slider": "right", "drawer": "closed", "lightbulb": 0})[1]
    assert (closed[0], closed[1], closed[3], closed[4]) == (0.0, 0.0, 0.0, 0.0)


# ---------------------------------------------------------------------------------- env side (no simulator)


def test_observation_and_action_mapping() -> None:
    rng = np.random.default_rng(0)
    obs = {
        "rgb_obs": {
            "rgb_static": rng.integers(0, 256, (200, 200, 3), dtype=np.uint8),
            "rgb_gripper": rng.integers(0, 256, (84, 84, 3), dtype=np.uint8),
        },
        "depth_obs": {},
        "robot_obs": rng.normal(size=15),
        "scene_obs": rng.normal(size=24),
    }
    batch = calvin_observation(
        obs,
        "open the drawer",
        ["observation.images.static", "observation.images.gripper"],
        {"observation.images.static": 96},
    )
    assert batch["task"] == ["open the drawer"]
    np.testing.assert_allclose(batch["observation.state"].numpy(), obs["robot_obs"][None].astype(np.float32))
    assert "observation.environment_state" not in batch
    assert batch["observation.images.static"].shape == (1, 3, 96, 96)
    gripper = batch["observation.images.gripper"]
    np.testing.assert_allclose(gripper[0].permute(1, 2, 0).numpy() * 255, obs["rgb_obs"]["rgb_gripper"], atol=1e-3)

    action = to_env_action(torch.tensor([[0.5, -2.0, 0.0, 0.1, 0.2, 0.3, 0.2]]))
    np.testing.assert_allclose(action, [0.5, -1.0, 0.0, 0.1, 0.2, 0.3, 1.0])
    assert to_env_action(np.array([0, 0, 0, 0, 0, 0, 0.0]))[6] == -1.0
    with pytest.raises(ConfigError):
        to_env_action(np.zeros(6))
