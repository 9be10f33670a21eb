"""Observations are checked against the policy's config; each problem is named."""

import numpy as np
import pytest

from mode_policy import get_preset
from mode_policy.errors import DataError
from mode_policy.serving.validation import validate_observation

CFG = get_preset("tiny", state_dim=5, action_dim=2, goal_dim=3)
IMG_CFG = get_preset("tiny", state_dim=0, goal_dim=3, image_keys=["observation.images.top"])
KNOWN = frozenset({"open", "close"})


def check(obs, cfg=CFG, encoder=True):
    return validate_observation(obs, cfg, has_goal_encoder=encoder, known_tasks=KNOWN, max_rows=8)


def state(*shape, dtype=np.float32):
    return np.zeros(shape, dtype)


def test_a_valid_observation_gets_its_history_axis_and_float32():
    obs = check({"observation.state": state(2, 5, dtype=np.float64), "task": ["open", "close"]})
    assert obs.arrays["observation.state"].shape == (2, 1, 5) and obs.arrays["observation.state"].dtype == np.float32
    assert obs.tasks == ["open", "close"] and obs.rows == 2
    single = check({"observation.state": state(1, 1, 5), "goal": np.ones((1, 3), np.float32)}, encoder=False)
    assert single.tasks is None and single.signature() != obs.signature()


@pytest.mark.parametrize(
    "obs, message",
    [
        ({"observation.state": state(1, 5), "task": "open", "extra": 1}, "unknown observation key 'extra'"),
        ({"task": "open"}, "lacks 'observation.state'"),
        ({"observation.state": state(1, 5)}, "exactly one goal"),
        ({"observation.state": state(1, 5), "task": "open", "goal": state(1, 3)}, "exactly one goal"),
        ({"observation.state": state(1, 4), "task": "open"}, r"shape \(1, 4\), expected \(B, 5\)"),
        ({"observation.state": state(1, 5, dtype=np.int64), "task": "open"}, "dtype int64, expected a float"),
        ({"observation.state": np.array([[0, 0, np.nan, 0, 0]]), "task": "open"}, "observation.state contains NaN"),
        (
            {"observation.state": np.array([[0, 0, 0, 0, 0], [0, np.inf, 0, 0, 0]]), "task": ["open", "open"]},
            r"contains inf \(first at batch row 1\)",
        ),
        ({"observation.state": state(1, 5), "task": "fly"}, "task 'fly' is not an instruction"),
        ({"observation.state": state(1, 5), "task": [1]}, "task must be a string"),
        ({"observation.state": state(2, 5), "task": "open"}, "batch sizes differ"),
        ({"observation.state": state(9, 5), "task": ["open"] * 9}, "batch size 9: the server takes 1 to 8"),
        ({"observation.state": [[0.0] * 5], "task": "open"}, "must be a numpy array, got list"),
        ({"observation.state": state(1, 5), "goal": state(1, 4)}, r"goal has shape \(1, 4\)"),
        ({"observation.state": state(1, 5), "goal": np.array([[0.0, np.nan, 0.0]])}, "goal contains NaN"),
        ("not a map", "obs must be a map"),
    ],
)
def test_problems_are_named(obs, message):
    with pytest.raises(DataError, match=message):
        check(obs)


def test_task_strings_need_a_goal_encoder():
    with pytest.raises(DataError, match="unknown observation key 'task'"):
        check({"observation.state": state(1, 5), "task": "open"}, encoder=False)


def test_camera_images():
    ok = check({"observation.images.top": np.zeros((1, 8, 8, 3), np.uint8), "goal": state(1, 3)}, IMG_CFG)
    assert ok.arrays["observation.images.top"].shape == (1, 1, 8, 8, 3)
    ok = check({"observation.images.top": np.zeros((1, 3, 8, 8), np.float64), "goal": state(1, 3)}, IMG_CFG)
    assert ok.arrays["observation.images.top"].dtype == np.float32
    with pytest.raises(DataError, match=r"observation.images.top has shape \(1, 8, 8, 4\)"):
        check({"observation.images.top": np.zeros((1, 8, 8, 4), np.uint8), "goal": state(1, 3)}, IMG_CFG)
    with pytest.raises(DataError, match="lacks 'observation.images.top'"):
        check({"goal": state(1, 3)}, IMG_CFG)
