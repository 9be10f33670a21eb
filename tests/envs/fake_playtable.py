"""A kinematic stand-in for calvin_env's PlayTableSimEnv (scene D's link positions, no physics):
the TCP follows its integrated target exactly and nothing in the scene moves, enough to test
the scripted expert's plans and the recorder without the simulator."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from mode_policy.envs.calvin import (
    get_env_state_for_initial_condition,
    initial_conditions,
)

#: World positions of the table's links in calvin_scene_D with everything closed / off.
LINKS = {
    "button_link": (-0.12, -0.12, 0.472),
    "switch_link": (0.3, 0.0302, 0.5219),
    "slide_link": (-0.24, 0.0609, 0.5434),
    "drawer_link": (0.18, -0.0791, 0.3466),
}
LINK_IDS = {name: i for i, name in enumerate([*LINKS, "led_link", "light_link", "plank_link"])}


class FakeBullet:
    def __init__(self, env: FakePlayTable) -> None:
        self.env = env

    def getLinkState(self, uid: int, link: int, physicsClientId: int = 0):
        name = next(k for k, v in LINK_IDS.items() if v == link)
        pos = np.array(LINKS[name])
        scene = self.env.scene_obs
        if name == "slide_link":
            pos[0] -= scene[0]  # the door slides towards -x
        elif name == "drawer_link":
            pos[1] -= scene[1]  # the drawer opens towards -y
        elif name == "switch_link":
            pos += scene[3] * np.array([0.0, 0.5, 0.866])
        return (tuple(pos), (0.0, 0.0, 0.0, 1.0))


class FakePlayTable:
    """reset / step / get_state_obs / get_info / get_camera_obs with CALVIN's shapes."""

    def __init__(self, cameras: bool = False) -> None:
        table = SimpleNamespace(name="table", uid=5, get_info=lambda: {"links": dict(LINK_IDS)})
        self.scene = SimpleNamespace(fixed_objects=[table])
        self.p, self.cid, self.t = FakeBullet(self), 0, 0
        self.robot = SimpleNamespace(max_rel_pos=0.02, max_rel_orn=0.05, gripper_action=1)
        self.cameras = cameras
        self.reset(*get_env_state_for_initial_condition(initial_conditions()[0]))

    def reset(self, robot_obs: np.ndarray, scene_obs: np.ndarray) -> dict:
        self.robot_obs, self.scene_obs = np.array(robot_obs, float), np.array(scene_obs, float)
        self.robot.target_pos, self.robot.target_orn = self.robot_obs[:3].copy(), self.robot_obs[3:6].copy()
        self.robot.gripper_action = 1
        self.t = 0
        return self.get_state_obs()

    def step(self, action: np.ndarray):
        assert action.shape == (7,) and np.all(np.abs(action[:6]) <= 1.0) and action[6] in (-1.0, 1.0)
        self.robot.target_pos = self.robot.target_pos + action[:3] * 0.02
        self.robot.target_orn = self.robot.target_orn + action[3:6] * 0.05
        self.robot.gripper_action = int(action[6])
        self.robot_obs[:3], self.robot_obs[3:6] = self.robot.target_pos, self.robot.target_orn
        self.robot_obs[6] = 0.08 if action[6] > 0 else 0.0  # closes on nothing
        self.robot_obs[14] = action[6]
        self.t += 1
        return self.get_state_obs(), 0.0, False, self.get_info()

    def get_state_obs(self) -> dict:
        return {"robot_obs": self.robot_obs.copy(), "scene_obs": self.scene_obs.copy()}

    def get_info(self) -> dict:
        return {"t": self.t}

    def get_camera_obs(self):
        return {"rgb_static": np.zeros((200, 200, 3), np.uint8), "rgb_gripper": np.zeros((84, 84, 3), np.uint8)}, {}


class StepsOracle:
    """The task oracle: a subtask is done ``steps`` steps after it was given, except ``never``."""

    def __init__(self, steps: int = 6, never: frozenset[str] = frozenset()) -> None:
        self.steps, self.never = steps, never

    def __call__(self, spec: dict) -> StepsOracle:  # stands in for the Tasks class
        return self

    def get_task_info_for_set(self, start: dict, info: dict, tasks: set[str]) -> set[str]:
        (task,) = tasks
        return set(tasks) if task not in self.never and info["t"] - start["t"] >= self.steps else set()
