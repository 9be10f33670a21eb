"""Observations are checked against the policy's schema; each problem is named, the same way for a
request to the server and for the policy's own ``predict_action_chunk``."""

import numpy as np
import pytest
import torch

from mode_policy import MoDEPolicy, get_preset
from mode_policy.errors import DataError
from mode_policy.observation import ObservationSchema

KNOWN = ["open", "close"]
CFG = get_preset("tiny", state_dim=5, action_dim=2, goal_dim=3, goal_encoder={"type": "task", "tasks": KNOWN, "dim": 3})
NO_TEXT = get_preset("tiny", state_dim=5, action_dim=2, goal_dim=3)
IMG_CFG = get_preset("tiny", state_dim=0, goal_dim=3, image_keys=["observation.images.top"], image_size=8)


def check(obs, cfg=CFG):
    return ObservationSchema.from_config(cfg).check_request(obs, max_rows=8)


def state(*shape, dtype=np.float32):
    return np.zeros(shape, dtype)


def test_the_schema_comes_from_the_config():
    schema = ObservationSchema.from_config(CFG)
    assert schema.keys() == ["observation.state", "goal", "task"]
    assert schema.known_tasks == frozenset(KNOWN) and schema.takes_text and schema.datasets == {}
    assert ObservationSchema.from_config(NO_TEXT).keys() == ["observation.state", "goal"]
    features = ObservationSchema.from_config(IMG_CFG).features()
    assert features["state"] is None and features["images"] == ["observation.images.top"]
    assert features["image_size"] == 8 and features["known_tasks"] is None


def test_a_valid_observation_gets_its_history_axis_and_float32():
    obs = check({"observation.state": state(2, 5, dtype=np.float64), "task": ["open", "close"]})
    assert obs.arrays["observation.state"].shape == (2, 1, 5) and obs.arrays["observation.state"].dtype == np.float32
    assert obs.tasks == ["open", "close"] and obs.rows == 2
    single = check({"observation.state": state(1, 1, 5), "goal": np.ones((1, 3), np.float32)}, NO_TEXT)
    assert single.tasks is None and single.signature() != obs.signature()


@pytest.mark.parametrize(
    "obs, message",
    [
        ({"observation.state": state(1, 5), "task": "open", "extra": 1}, "unknown observation key 'extra'"),
        ({"task": "open"}, r"observation lacks 'observation.state' \(B, 5\)"),
        ({"observation.state": state(1, 5)}, "exactly one goal: 'goal' \\(B, 3\\) or 'task' strings"),
        ({"observation.state": state(1, 5), "task": "open", "goal": state(1, 3)}, "exactly one goal"),
        ({"observation.state": state(1, 4), "task": "open"}, r"shape \(1, 4\), expected \(B, 5\) or \(B, 1, 5\)"),
        ({"observation.state": state(1, 2, 5), "task": "open"}, r"shape \(1, 2, 5\), expected"),
        ({"observation.state": state(1, 5, dtype=np.int64), "task": "open"}, "dtype int64, expected a float"),
        (
            {"observation.state": np.array([[0, 0, np.nan, 0, 0]]), "task": "open"},
            r"observation.state contains NaN \(batch rows \[0\]\)",
        ),
        (
            {"observation.state": np.array([[0, 0, 0, 0, 0], [0, np.inf, 0, 0, 0]]), "task": ["open", "open"]},
            r"contains inf \(batch rows \[1\]\)",
        ),
        (
            {"observation.state": state(1, 5), "task": "fly"},
            "task: unknown instruction 'fly'; this policy knows 'close'",
        ),
        ({"observation.state": state(1, 5), "task": [1]}, "task must be a string or a non-empty list of strings"),
        ({"observation.state": state(1, 5), "task": []}, "task must be a string or a non-empty list of strings"),
        ({"observation.state": state(2, 5), "task": "open"}, "batch sizes differ between keys"),
        ({"observation.state": state(9, 5), "task": ["open"] * 9}, "batch size 9: the server takes 1 to 8"),
        ({"observation.state": [[0.0] * 5], "task": "open"}, "must be a numpy array, got list"),
        ({"observation.state": state(1, 5), "goal": state(1, 4)}, r"goal has width 4 \(shape \(1, 4\)\), expected"),
        ({"observation.state": state(1, 5), "goal": state(1, 1, 3)}, r"goal has shape \(1, 1, 3\), expected \(B, 3\)"),
        ({"observation.state": state(1, 5), "goal": np.array([[0.0, np.nan, 0.0]])}, "goal contains NaN"),
        ("not a map", "obs must be a map"),
    ],
)
def test_problems_are_named(obs, message):
    with pytest.raises(DataError, match=message):
        check(obs)


def test_task_strings_need_a_goal_encoder():
    with pytest.raises(DataError, match="unknown observation key 'task'"):
        check({"observation.state": state(1, 5), "task": "open"}, NO_TEXT)


def test_camera_images():
    ok = check({"observation.images.top": np.zeros((1, 8, 8, 3), np.uint8), "goal": state(1, 3)}, IMG_CFG)
    assert ok.arrays["observation.images.top"].shape == (1, 1, 8, 8, 3)
    ok = check({"observation.images.top": np.zeros((1, 3, 8, 8), np.float64), "goal": state(1, 3)}, IMG_CFG)
    assert ok.arrays["observation.images.top"].dtype == np.float32
    with pytest.raises(DataError, match=r"observation.images.top has shape \(1, 8, 8, 4\), .*trained at H = W = 8"):
        check({"observation.images.top": np.zeros((1, 8, 8, 4), np.uint8), "goal": state(1, 3)}, IMG_CFG)
    with pytest.raises(DataError, match="observation.images.top has dtype int16, expected uint8"):
        check({"observation.images.top": np.zeros((1, 8, 8, 3), np.int16), "goal": state(1, 3)}, IMG_CFG)
    with pytest.raises(DataError, match="lacks camera 'observation.images.top'"):
        check({"goal": state(1, 3)}, IMG_CFG)


# ------------------------------------------------- the policy's check_inputs
@pytest.mark.parametrize(
    "obs, message",
    [
        ({"observation.state": state(1, 4), "task": ["open"]}, r"observation.state has shape \(1, 4\), expected"),
        ({"observation.state": state(1, 5, dtype=np.int64), "task": ["open"]}, "dtype int64, expected a float"),
        ({"observation.state": np.full((1, 5), np.nan), "task": ["open"]}, r"contains NaN \(batch rows \[0\]\)"),
        ({"observation.state": state(1, 5), "task": ["fly"]}, "task: unknown instruction 'fly'"),
        ({"observation.state": state(2, 5), "task": ["open"]}, "batch sizes differ between keys"),
        ({"observation.state": state(1, 5), "goal": state(1, 4)}, "goal has width 4"),
        ({"task": ["open"]}, "lacks 'observation.state'"),
    ],
)
def test_the_policy_and_the_server_name_a_problem_alike(obs, message):
    policy = MoDEPolicy(CFG).eval()
    with pytest.raises(DataError, match=message) as served:
        ObservationSchema.for_policy(policy).check_request(obs)
    with pytest.raises(DataError, match=message) as direct:
        policy.predict_action_chunk(obs)
    assert str(direct.value).replace("batch lacks", "observation lacks") == str(served.value)


def test_a_python_batch_keeps_other_keys_and_may_be_one_frame():
    schema = ObservationSchema.from_config(get_preset("tiny", state_dim=5, action_dim=2, goal_dim=3, n_obs_steps=2))
    frame = {"observation.state": state(2, 5), "goal": state(2, 3), "action": "anything", "task": "ignored"}
    with pytest.raises(DataError, match="batch sizes differ"):  # task strings beside goal vectors: still one per row
        schema.check_batch(frame)
    checked = schema.check_batch({**frame, "task": ["a", "b"]})
    assert torch.is_tensor(checked["observation.state"]) and checked["action"] == "anything"
    assert schema.check_batch({**frame, "task": ["a", "b"], "observation.state": state(2, 2, 5)})
    with pytest.raises(DataError, match=r"has shape \(2, 5\), expected \(B, 2, 5\)"):  # a request holds the history
        schema.check_request({"observation.state": state(2, 5), "goal": state(2, 3)})
    with pytest.raises(DataError, match=r"batch needs a goal: 'goal' \(B, 3\) \('task' strings need a goal encoder"):
        schema.check_batch({"observation.state": state(2, 5), "task": ["a", "b"]})


def test_a_mixture_names_its_dataset_and_takes_its_width_or_the_padded_one():
    cfg = get_preset("tiny", state_dim=6, action_dim=2, goal_dim=3)
    schema = ObservationSchema.from_config(cfg, datasets={"wide": 6, "narrow": 4})
    obs = {"observation.state": state(2, 4), "goal": state(2, 3)}
    with pytest.raises(DataError, match=r"datasets \(wide, narrow\) separately: name one"):
        schema.check_batch(obs)
    with pytest.raises(DataError, match="unknown dataset 'calvin': this policy normalises wide, narrow"):
        schema.check_batch({**obs, "dataset": "calvin"})
    for width in (4, 5, 6):
        schema.check_batch({**obs, "observation.state": state(2, width), "dataset": "narrow"})
    with pytest.raises(DataError, match=r"shape \(2, 4\), expected \(B, 6\) or \(B, 1, 6\)"):
        schema.check_batch({**obs, "dataset": "wide"})
    with pytest.raises(DataError, match=r"shape \(2, 3\), expected \(B, 4 to 6\) .*padded with zeros"):
        schema.check_batch({**obs, "observation.state": state(2, 3), "dataset": "narrow"})
    with pytest.raises(DataError, match="batch sizes differ between keys: .*dataset: 3"):
        schema.check_batch({**obs, "dataset": ["narrow"] * 3})
    schema.check_batch({**obs, "dataset": ["narrow", "wide"]})  # rows of two datasets: each row's width is
    # checked where it is normalised (and a chunk's rows must name one dataset)
