"""Building calvin_env's simulator: argument checks and the dataset-config lookup (always),
and, where calvin_env is installed (scripts/install/install_calvin.sh), the real environment: reset
to a protocol initial scene, stepping, cameras, the dataset route, the task oracle."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from mode_policy.envs.calvin import (
    CALVIN_TASKS,
    TASK_ORACLE_SPEC,
    get_env_state_for_initial_condition,
    get_sequences,
)
from mode_policy.envs.calvin_sim import dataset_config_path, import_calvin_env, make_calvin_env
from mode_policy.errors import ConfigError, SimulatorError

needs_calvin_env = pytest.mark.skipif(
    importlib.util.find_spec("calvin_env") is None,
    reason="calvin_env is not installed (scripts/install/install_calvin.sh)",
)
STATIC = "observation.images.static"


def test_missing_calvin_env_gives_install_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "calvin_env", None)  # import calvin_env now fails
    with pytest.raises(SimulatorError, match=r"scripts/install/install_calvin\.sh") as err:
        import_calvin_env()
    assert "pip install --no-deps -e" in str(err.value) and "pybullet==3.2.7" in str(err.value)
    with pytest.raises(SimulatorError):
        make_calvin_env()


def test_dataset_config_path(tmp_path: Path) -> None:
    root = tmp_path / "task_D_D"
    config = root / "validation" / ".hydra" / "merged_config.yaml"
    with pytest.raises(ConfigError, match="is not a CALVIN dataset"):
        dataset_config_path(root)
    config.parent.mkdir(parents=True)
    config.write_text("env: {}\n")
    assert dataset_config_path(root) == config  # the dataset root
    assert dataset_config_path(root / "validation") == config  # or its validation folder: no double append


def test_argument_errors() -> None:
    with pytest.raises(ConfigError, match="scene='E'"):
        make_calvin_env(scene="E")
    with pytest.raises(ConfigError, match="renderer='opengl'"):
        make_calvin_env(renderer="opengl")
    with pytest.raises(ConfigError, match="unknown CALVIN camera key"):
        make_calvin_env(["observation.images.tactile"])


@pytest.fixture(scope="module")
def physics_env():
    if importlib.util.find_spec("calvin_env") is None:
        pytest.skip("calvin_env is not installed")
    return make_calvin_env([])  # calvin_env disconnects when the env is collected


def _scene(**changes):
    condition = {
        "led": 0,
        "lightbulb": 0,
        "slider": "right",
        "drawer": "closed",
        "red_block": "table",
        "blue_block": "table",
        "pink_block": "slider_left",
        "grasped": 0,
    }
    return get_env_state_for_initial_condition({**condition, **changes})


@needs_calvin_env
def test_reset_to_protocol_scene_and_step(physics_env) -> None:
    condition, _ = get_sequences(1)[0]
    robot, scene = get_env_state_for_initial_condition(condition)
    obs = physics_env.reset(robot_obs=robot, scene_obs=scene)
    assert obs["rgb_obs"] == {} and obs["robot_obs"].shape == (15,) and obs["scene_obs"].shape == (24,)
    np.testing.assert_allclose(obs["robot_obs"][:6], robot[:6], atol=1e-3)
    np.testing.assert_allclose(obs["scene_obs"], scene, atol=5e-3)  # one physics step after placement
    info = physics_env.get_info()
    assert set(info["scene_info"]["movable_objects"]) == {"block_red", "block_blue", "block_pink"}
    start = obs["robot_obs"][:3].copy()
    for _ in range(10):  # +x at full speed: 2 cm per step
        obs, _, _, info = physics_env.step(np.array([1.0, 0, 0, 0, 0, 0, 1.0]))
    moved = obs["robot_obs"][:3] - start
    assert 0.1 < moved[0] < 0.25 and np.abs(moved[1:]).max() < 0.03


@needs_calvin_env
def test_oracle_detects_scene_changes(physics_env) -> None:
    oracle = import_calvin_env().Tasks(TASK_ORACLE_SPEC)
    physics_env.reset(*_scene())
    start = physics_env.get_info()
    physics_env.reset(*_scene(drawer="open", led=1, slider="left"))
    after = physics_env.get_info()
    done = oracle.get_task_info_for_set(start, after, set(CALVIN_TASKS))
    assert done == {"open_drawer", "turn_on_led", "move_slider_left"}
    assert oracle.get_task_info_for_set(after, start, {"open_drawer", "close_drawer"}) == {"close_drawer"}


@needs_calvin_env
def test_cameras_and_the_dataset_route(tmp_path: Path) -> None:
    """Only the asked cameras render; a dataset's merged_config.yaml (here: the composed default
    config, saved as a dataset records it) builds the same environment."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    conf_dir = import_calvin_env().conf_dir
    with initialize_config_dir(config_dir=str(conf_dir), version_base=None):
        config = compose("config_data_collection", overrides=["cameras=static_and_gripper", "use_vr=false"])
    target = tmp_path / "validation" / ".hydra" / "merged_config.yaml"
    target.parent.mkdir(parents=True)
    OmegaConf.save(config, target)
    for env in (make_calvin_env([STATIC]), make_calvin_env([STATIC], dataset_path=tmp_path, renderer="tiny")):
        obs = env.reset(*_scene())
        assert set(obs["rgb_obs"]) == {"rgb_static"}
        image = obs["rgb_obs"]["rgb_static"]
        assert image.shape == (200, 200, 3) and image.dtype == np.uint8 and image.std() > 10
