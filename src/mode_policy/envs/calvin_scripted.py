"""A scripted expert for CALVIN scene D: it completes subtasks from the simulator's state.

:class:`CalvinExpert` reads where the furniture and the blocks are (``scene_obs`` and the
table's link positions), plans a list of :class:`Waypoint` for the subtask it is given, and
turns them into CALVIN's relative actions (7,): position steps of at most 2 cm and angle
steps of at most 0.05 rad per unit, gripper 1 (open) / -1 (closed), exactly what a policy
outputs in the evaluation. Actions are computed against calvin_env's integrated TCP target
(``robot.target_pos`` / ``target_orn``, which each relative action moves), so a waypoint is
reached exactly and a blocked arm does not wind up.

Every plan starts from wherever the arm is (a chain gives the next instruction the moment
the oracle saw the previous one done): it backs away from the furniture, rises to a safe
height, travels, then does the subtask. Offsets to the handles, the button and the switch
were measured on ``calvin_scene_D`` relative to the live link positions; the other scenes
place the furniture differently and are not supported. ``rng`` jitters the speed and the
contact points a little, so recorded demonstrations vary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

from ..errors import ConfigError

__all__ = ["BLOCK_SIZES", "SCRIPTED_TASKS", "CalvinExpert", "ExpertPolicy", "Waypoint", "check_tasks", "run_subtask"]

_COLORS = ("red", "blue", "pink")
#: The subtasks the expert can do, in CALVIN's task order.
SCRIPTED_TASKS: tuple[str, ...] = (
    *[f"{verb}_{c}_block_{side}" for verb in ("rotate", "push") for c in _COLORS for side in ("right", "left")],
    "move_slider_left",
    "move_slider_right",
    "open_drawer",
    "close_drawer",
    *[f"lift_{c}_block_table" for c in _COLORS],
    "place_in_drawer",
    "turn_on_lightbulb",
    "turn_off_lightbulb",
    "turn_on_led",
    "turn_off_led",
)
#: Block footprints (length along the block's x, width along its y) in scene D (URDF sizes x 0.8).
BLOCK_SIZES: dict[str, tuple[float, float]] = {"red": (0.056, 0.04), "blue": (0.04, 0.04), "pink": (0.08, 0.04)}
_BLOCK_SLICE = {"red": slice(6, 12), "blue": slice(12, 18), "pink": slice(18, 24)}
_ROLL_PITCH = np.array([3.09045411, -0.02908596])  # the TCP's roll and pitch at CALVIN's initial pose
_YAW = 1.50013585  # and its yaw: the fingers then close along the world x axis
_FINGER_YAW = 1.558  # TCP yaw minus the angle of the fingers' closing axis
_MAX_POS, _MAX_ORN = 0.02, 0.05  # calvin_env's metres / radians per unit of relative action
_SAFE_Z = 0.58  # travel height: above the blocks, below the cabinet's lights
_SWITCH_AXIS = np.array([0.0, 0.5, 0.866])  # the light switch slides up and back along this
_FINGER = 0.0115  # half thickness of the closed fingers
OPEN, CLOSED = 1.0, -1.0


@dataclass(frozen=True)
class Waypoint:
    """A TCP target the expert moves to, then holds for ``hold`` steps."""

    pos: tuple[float, float, float]
    """TCP position (m, world frame)."""
    yaw: float
    """TCP yaw (rad); roll and pitch stay those of CALVIN's initial pose."""
    grip: float
    """Gripper: 1 open, -1 closed."""
    speed: float = 0.5
    """Largest relative action per step along each axis (1 = 2 cm or 0.05 rad)."""
    hold: int = 0
    """Extra steps spent at the waypoint (e.g. while the gripper closes)."""
    tilt: float = 0.0
    """Added to the roll (rad): negative tilts the fingertips away from the robot, which
    reaches further back and higher."""


def _wrap(angle: np.ndarray | float) -> np.ndarray:
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


class CalvinExpert:
    """Plans and acts on a calvin_env ``PlayTableSimEnv`` of scene D (see the module docstring).

    ``start(task)`` plans from the current scene; ``act()`` then returns the next relative
    action, or None once the plan is done (whether or not the oracle saw the task done)."""

    def __init__(self, env, rng: np.random.Generator | None = None, jitter: float = 1.0) -> None:
        self.env = env
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.jitter = float(jitter)
        table = next((o for o in env.scene.fixed_objects if o.name == "table"), None)
        if table is None:
            raise ConfigError("the CALVIN scene has no 'table' object: the scripted expert needs scene D")
        self._table = table
        self._links = table.get_info()["links"]
        self._plan: list[Waypoint] = []
        self._held = 0
        self.task: str | None = None

    # ------------------------------------------------------------------ state
    def _link(self, name: str) -> np.ndarray:
        p = self.env.p
        return np.array(p.getLinkState(self._table.uid, self._links[name], physicsClientId=self.env.cid)[0])

    def _scene(self) -> np.ndarray:
        return np.asarray(self.env.get_state_obs()["scene_obs"], dtype=np.float64)  # (24,)

    def _target(self) -> np.ndarray:
        return np.asarray(self.env.robot.target_pos, dtype=np.float64)  # (3,)

    def _noise(self, scale: float = 0.004) -> np.ndarray:
        return self.rng.uniform(-scale, scale, 3) * self.jitter

    def _speed(self, low: float = 0.4, high: float = 0.7) -> float:
        return float(self.rng.uniform(low, high)) if self.jitter else (low + high) / 2

    # ------------------------------------------------------------------ acting
    def start(self, task: str) -> None:
        """Plan ``task`` from the current scene (raises ConfigError for a task it cannot do)."""
        if task not in SCRIPTED_TASKS:
            raise ConfigError(f"the scripted expert cannot do {task!r}; it does: {', '.join(SCRIPTED_TASKS)}")
        self.task = task
        self._plan = self._retreat(task.startswith("place_")) + self._task_plan(task)
        self._held = 0

    def act(self) -> np.ndarray | None:
        """The next relative action (7,) toward the current waypoint; None when the plan is done."""
        robot = self.env.robot
        while self._plan:
            wp = self._plan[0]
            dpos = np.asarray(wp.pos) - np.asarray(robot.target_pos)
            dorn = _wrap(np.r_[_ROLL_PITCH[0] + wp.tilt, _ROLL_PITCH[1], wp.yaw] - np.asarray(robot.target_orn))
            if np.abs(dpos).max() > 1e-4 or np.abs(dorn).max() > 1e-4:
                pos = np.clip(dpos / _MAX_POS, -wp.speed, wp.speed)
                orn = np.clip(dorn / _MAX_ORN, -wp.speed, wp.speed)
                return np.r_[pos, orn, wp.grip]
            if self._held < wp.hold:
                self._held += 1
                return np.r_[np.zeros(6), wp.grip]
            self._plan.pop(0)
            self._held = 0
        return None

    # ------------------------------------------------------------------ planning
    def _retreat(self, keep_hold: bool) -> list[Waypoint]:
        """Away from whatever the arm touches, up to the travel height, keeping the yaw. A
        grasped block is let go first unless ``keep_hold`` (the next subtask places it)."""
        q = self._target()
        yaw = float(self.env.robot.target_orn[2])
        grip = float(self.env.robot.gripper_action)
        width = float(self.env.get_state_obs()["robot_obs"][6])  # the fingers' opening
        out: list[Waypoint] = []
        if grip == CLOSED and width > 0.01 and not keep_hold:  # closed on something: release it
            grip = OPEN
            out.append(Waypoint(tuple(q), yaw, OPEN, 0.5, hold=8))
        if q[2] < 0.42:  # at the drawer's handle: straight up, clear of the table's edge
            q = np.array([q[0], min(q[1], -0.2), 0.47])
            out.append(Waypoint(tuple(q), yaw, grip, 0.5))
        elif q[1] > -0.06:  # at the cabinet (slider handle, switch): back off first
            q = np.array([q[0], -0.07, q[2] + 0.01])
            out.append(Waypoint(tuple(q), yaw, grip, 0.5))
        if q[2] < _SAFE_Z:
            out.append(Waypoint((q[0], q[1], _SAFE_Z), yaw, grip, 0.6))
        return out

    def _task_plan(self, task: str) -> list[Waypoint]:
        if task in ("open_drawer", "close_drawer"):
            return self._drawer(task == "open_drawer")
        if task.startswith("move_slider_"):
            return self._slider(task.endswith("left"))
        if task in ("turn_on_led", "turn_off_led"):
            return self._button()
        if task == "turn_on_lightbulb":
            return self._switch_up()
        if task == "turn_off_lightbulb":
            return self._switch_down()
        if task == "place_in_drawer":
            return self._place_in_drawer()
        verb, color = task.split("_")[:2]
        if verb == "lift":
            return self._lift(color)
        if verb == "push":
            return self._push(color, task.endswith("left"))
        return self._rotate(color, task.endswith("left"))

    def _travel(self, x: float, y: float, grip: float, yaw: float = _YAW) -> list[Waypoint]:
        return [Waypoint((x, y, _SAFE_Z), yaw, grip, self._speed(0.5, 0.8))]

    def _drawer(self, opening: bool) -> list[Waypoint]:
        """Open: hook the closed fingers behind the handle and pull; close: push the handle."""
        com = self._link("drawer_link")  # moves with the drawer (towards -y when opening)
        d = self._scene()[1]
        x, z = com[0] + self._noise(0.02)[0], com[2] + 0.008 + self._noise(0.002)[2]
        speed = self._speed(0.35, 0.6)
        if opening:
            y = com[1] - 0.141 + self._noise(0.003)[1]  # between the handle and the drawer's front
            end = y - min(0.17, 0.215 - d)
        else:
            y = com[1] - 0.183 - _FINGER - 0.012  # in front of the handle
            end = com[1] - 0.183 + d - _FINGER + 0.004  # the handle's front when closed
        return [
            *self._travel(x, y, CLOSED),
            Waypoint((x, y, 0.46), _YAW, CLOSED, 0.6),
            Waypoint((x, y, z), _YAW, CLOSED, 0.4),
            Waypoint((x, end, z), _YAW, CLOSED, speed),
        ]

    def _slider(self, left: bool) -> list[Waypoint]:
        """Push the sliding door's handle sideways with the closed fingers."""
        s = self._scene()[0]  # 0: door right, 0.28: door left (the handle moves towards -x)
        handle = self._link("slide_link")[0] + 0.28  # the handle's centre x
        side = 1.0 if left else -1.0  # the fingers push from this side of the handle
        x0 = handle + side * (0.045 + self._noise(0.004)[0])
        goal = min(s + 0.2, 0.27) if left else max(s - 0.2, 0.01)
        x1 = (handle + s - goal) + side * 0.036
        y, z = 0.01 + self._noise(0.003)[1], 0.555 + self._noise(0.004)[2]
        return [
            *self._travel(x0, -0.07, CLOSED),
            Waypoint((x0, -0.07, z), _YAW, CLOSED, 0.6),
            Waypoint((x0, y, z), _YAW, CLOSED, 0.4),
            Waypoint((x1, y, z), _YAW, CLOSED, self._speed()),
        ]

    def _button(self) -> list[Waypoint]:
        """Press the LED button (each press toggles the LED) and come back up."""
        b = self._link("button_link") + self._noise(0.004) * np.array([1, 1, 0])
        return [
            *self._travel(b[0], b[1], CLOSED),
            Waypoint((b[0], b[1], b[2] + 0.06), _YAW, CLOSED, 0.6),
            Waypoint((b[0], b[1], b[2] - 0.035), _YAW, CLOSED, self._speed(0.25, 0.4)),
            Waypoint((b[0], b[1], b[2] + 0.07), _YAW, CLOSED, 0.5),
        ]

    def _switch_up(self) -> list[Waypoint]:
        """Push the light switch's bar back from the front; it slides up its slot (bulb on)."""
        c = self._link("switch_link") + self._noise(0.003) * np.array([3, 1, 1])
        return [
            *self._travel(c[0], c[1] - 0.07, CLOSED),
            Waypoint((c[0], c[1] - 0.07, c[2]), _YAW, CLOSED, 0.6),
            Waypoint((c[0], c[1] + 0.045, c[2] + 0.012), _YAW, CLOSED, self._speed(0.3, 0.5)),
        ]

    def _switch_down(self) -> list[Waypoint]:
        """Press the light switch's bar down its slot from above (bulb off), at its end nearer
        the robot and with the fingers tilted back: the raised bar is at the edge of the reach."""
        c = self._link("switch_link") + self._noise(0.003)
        c[0] -= 0.05
        bottom = c - self._scene()[3] * _SWITCH_AXIS  # the bar's place when the switch is down
        tilt = -0.3
        return [
            Waypoint((c[0], c[1] - 0.07, c[2] + 0.045), _YAW, CLOSED, self._speed(0.5, 0.8), tilt=tilt),
            Waypoint((c[0], c[1], c[2] + 0.04), _YAW, CLOSED, 0.4, tilt=tilt),
            Waypoint((bottom[0], bottom[1] - 0.01, bottom[2]), _YAW, CLOSED, self._speed(0.3, 0.5), tilt=tilt),
        ]

    def _block(self, color: str) -> tuple[np.ndarray, float]:
        """A block's position (3,) and the TCP yaw that closes the fingers across its width."""
        block = self._scene()[_BLOCK_SLICE[color]]
        yaw = _wrap(block[5] + np.pi / 2 + _FINGER_YAW)
        yaw = float(yaw + np.pi * np.round((_YAW - yaw) / np.pi))  # the equivalent grasp nearest the rest yaw
        return block[:3], yaw

    def _grasp(self, color: str) -> tuple[list[Waypoint], np.ndarray, float]:
        pos, yaw = self._block(color)
        pos = pos + self._noise(0.003) * np.array([1, 1, 0])
        z = pos[2] + 0.005 + self._noise(0.002)[2]
        plan = [
            *self._travel(pos[0], pos[1], OPEN, yaw),
            Waypoint((pos[0], pos[1], pos[2] + 0.06), yaw, OPEN, 0.6),
            Waypoint((pos[0], pos[1], z), yaw, OPEN, self._speed(0.25, 0.4)),
            Waypoint((pos[0], pos[1], z), yaw, CLOSED, 0.5, hold=15),
        ]
        return plan, np.array([pos[0], pos[1], z]), yaw

    def _lift(self, color: str) -> list[Waypoint]:
        plan, at, yaw = self._grasp(color)
        return [*plan, Waypoint((at[0], at[1], at[2] + 0.14), yaw, CLOSED, self._speed(0.3, 0.5))]

    def _rotate(self, color: str, left: bool) -> list[Waypoint]:
        """Grasp the block where it lies, turn the hand by about 85 degrees on the table (the
        block slips a little at first; the oracle wants 60), let go."""
        plan, at, yaw = self._grasp(color)
        turn = (1.0 if left else -1.0) * (1.5 + self._noise(0.05)[0])
        press = (at[0], at[1], at[2] - 0.006)  # a little down: the block must keep touching the table
        # and let go at the end, so that a block the turning hand raised off the table drops back
        return [
            *plan,
            Waypoint(press, yaw + turn, CLOSED, self._speed(0.4, 0.6)),
            Waypoint(press, yaw + turn, OPEN, 0.5, hold=6),
        ]

    def _push(self, color: str, left: bool) -> list[Waypoint]:
        """Slide the block 13 cm along x with the side of the closed fingers."""
        pos, _ = self._block(color)
        theta = self._scene()[_BLOCK_SLICE[color]][5]
        length, width = BLOCK_SIZES[color]
        half_x = abs(length / 2 * np.cos(theta)) + abs(width / 2 * np.sin(theta))
        side = 1.0 if left else -1.0  # the fingers start on this side of the block
        x0 = pos[0] + side * (half_x + _FINGER + 0.02)
        y, z = pos[1] + self._noise(0.004)[1], pos[2] + 0.01
        x1 = pos[0] - side * (0.13 - half_x - _FINGER)
        return [
            *self._travel(x0, y, CLOSED),
            Waypoint((x0, y, z + 0.05), _YAW, CLOSED, 0.6),
            Waypoint((x0, y, z), _YAW, CLOSED, 0.3),
            Waypoint((x1, y, z), _YAW, CLOSED, self._speed(0.3, 0.5)),
        ]

    def _place_in_drawer(self) -> list[Waypoint]:
        """Carry the held block over the open part of the drawer, turned so its length lies
        along the drawer, lower it below the front wall's top and let go."""
        com = self._link("drawer_link")
        d = self._scene()[1]
        yaw = float(self.env.robot.target_orn[2])
        yaw = yaw - np.pi / 2 if yaw > 0.5 else yaw + np.pi / 2
        x, y = com[0] + self._noise(0.02)[0], -0.176 - d / 2 + self._noise(0.004)[1]
        return [
            *self._travel(x, y, CLOSED, yaw),
            Waypoint((x, y, 0.47), yaw, CLOSED, 0.5),
            Waypoint((x, y, 0.435), yaw, CLOSED, 0.3),
            Waypoint((x, y, 0.435), yaw, OPEN, 0.5, hold=8),
            Waypoint((x, y, 0.5), yaw, OPEN, 0.5),
        ]


def run_subtask(env, expert: CalvinExpert, oracle, task: str, max_steps: int, on_step=None) -> tuple[bool, int]:
    """Let ``expert`` do ``task`` until calvin_env's ``oracle`` sees it done (as the evaluation
    checks it: against the info at the start) or ``max_steps`` steps pass. ``on_step(obs,
    action)`` sees every step's observation before its action. Returns (success, steps)."""
    start_info = env.get_info()
    expert.start(task)
    for step in range(max_steps):
        action = expert.act()
        if action is None:
            action = np.r_[np.zeros(6), env.robot.gripper_action]  # plan done: hold still
        if on_step is not None:
            on_step(env.get_state_obs(), action)
        _, _, _, info = env.step(action)
        if oracle.get_task_info_for_set(start_info, info, {task}):
            return True, step + 1
    return False, max_steps


class ExpertPolicy(torch.nn.Module):
    """The expert as a policy for :func:`~mode_policy.evaluation.calvin.evaluate_calvin` (on the
    same ``env``): it reads the subtask from the instruction (a validation or training
    annotation), plans it at its first step after each ``reset``, and holds still once its plan
    is done. CALVIN's score with it is what a perfect imitation of the demonstrations gets."""

    def __init__(self, env, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        from .calvin import VAL_INSTRUCTIONS
        from .calvin_annotations import TRAIN_INSTRUCTIONS

        self.expert = CalvinExpert(env, rng)
        self.config = SimpleNamespace(image_keys=[], image_size=0, state_dim=15, action_dim=7)
        self.tasks = {text: task for task, texts in TRAIN_INSTRUCTIONS.items() for text in texts}
        self.tasks.update({text: task for task, text in VAL_INSTRUCTIONS.items()})
        self._planned = False

    def reset(self) -> None:
        self._planned = False

    def select_action(self, batch: dict) -> torch.Tensor:
        if not self._planned:
            instruction = batch["task"][0]
            if instruction not in self.tasks:
                raise ConfigError(f"the scripted expert does not know the instruction {instruction!r}")
            self.expert.start(self.tasks[instruction])
            self._planned = True
        action = self.expert.act()
        if action is None:  # done: hold still
            action = np.r_[np.zeros(6), self.expert.env.robot.gripper_action]
        return torch.as_tensor(action, dtype=torch.float32)[None]  # (1, 7)


def check_tasks(tasks: Sequence[str]) -> list[str]:
    """``tasks`` as a list, ConfigError naming any the expert cannot do."""
    unknown = [t for t in tasks if t not in SCRIPTED_TASKS]
    if unknown:
        raise ConfigError(f"the scripted expert cannot do {unknown}; it does: {', '.join(SCRIPTED_TASKS)}")
    return list(tasks)
