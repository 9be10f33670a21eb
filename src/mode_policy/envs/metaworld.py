"""Meta-World (v3, ``metaworld==3.1.1``) environments for multitask imitation learning.

What this module provides:

* :data:`TASK_SETS` / :func:`resolve_tasks`: the MT10 / MT25 / MT50 task lists exactly as
  Meta-World's own benchmark definitions (``metaworld.env_dict``) order them.
* :data:`INSTRUCTIONS`: one natural-language instruction per task (all 50, distinct).
* Seeded initial conditions. Every episode is identified by ``(task, seed)``. The seed
  drives Meta-World's own seeded sampling of the object/goal vector (``seeded_rand_vec``
  with ``env.seed(seed)``; the env's rejection-sampling loops, e.g. "goal at least 15 cm
  from the object", run on that generator), and the resulting vector is then frozen. The
  same ``(task, seed)`` therefore always gives the same initial state and, with a
  deterministic controller, the same trajectory, independent of global numpy state and
  of what the env did before. The vector is exposed as :func:`initial_condition` /
  :attr:`MetaWorldEnv.initial_condition` so that datasets can record it.
* A seed split: demonstrations use seeds in ``[DEMO_SEED_BASE, DEMO_SEED_BASE + SEED_SPAN)``
  (:func:`demo_seed`), evaluation uses the disjoint range starting at ``EVAL_SEED_BASE``
  (:func:`eval_seed`).
* :class:`ScriptedExpert`: Meta-World's scripted expert for a task (``metaworld.policies``).
* :class:`MetaWorldEnv`: one env with a small, explicit API (39-d float32 state, 4-d
  action in [-1, 1], success from ``info["success"]``, step limit 500, optional CPU
  camera rendering: headless only when :func:`~mode_policy.envs.rendering.setup_headless_rendering`
  ran before this module was first imported, as mujoco reads ``MUJOCO_GL`` then).
* :class:`MetaWorldBatch`: N envs stepped in-process with one ``(N, 4)`` action batch,
  for evaluation where the policy inference is what gets batched.
"""

from __future__ import annotations

import atexit
import warnings
import weakref
from collections.abc import Sequence
from typing import Any

import metaworld  # noqa: F401  (registers envs; imports mujoco: set up rendering first, see .rendering)
import mujoco
import numpy as np
from metaworld import env_dict as _mw_env_dict
from metaworld.policies import ENV_POLICY_MAP as _ENV_POLICY_MAP
from metaworld.sawyer_xyz_env import SawyerXYZEnv

from ..errors import ConfigError

__all__ = [
    "ACTION_DIM",
    "ALL_TASKS",
    "CAMERAS",
    "DEMO_SEED_BASE",
    "EVAL_SEED_BASE",
    "EXPERT_POLICIES",
    "FPS",
    "INSTRUCTIONS",
    "MAX_EPISODE_STEPS",
    "OBS_DIM",
    "SEED_SPAN",
    "TASK_SETS",
    "UPSIDE_DOWN_CAMERAS",
    "MetaWorldBatch",
    "MetaWorldEnv",
    "ScriptedExpert",
    "TCP_AIMED_TASKS",
    "demo_seed",
    "eval_seed",
    "initial_condition",
    "resolve_tasks",
    "seed_split",
]

# --------------------------------------------------------------------------------------
# Task sets and instructions
# --------------------------------------------------------------------------------------

#: All 50 v3 task names, in Meta-World's canonical (MT50) order.
ALL_TASKS: list[str] = list(_mw_env_dict.ALL_V3_ENVIRONMENTS.keys())

#: Benchmark task sets, taken from Meta-World's own definitions.
TASK_SETS: dict[str, list[str]] = {
    "mt10": list(_mw_env_dict.MT10_V3.keys()),
    "mt25": list(_mw_env_dict.MT25_V3.keys()),
    "mt50": list(_mw_env_dict.MT50_V3.keys()),
    "ml10-train": list(_mw_env_dict.ML10_V3["train"].keys()),
    "ml10-test": list(_mw_env_dict.ML10_V3["test"].keys()),
    "ml45-train": list(_mw_env_dict.ML45_V3["train"].keys()),
    "ml45-test": list(_mw_env_dict.ML45_V3["test"].keys()),
}

#: One natural-language instruction per task.
INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "pick up the nut and place it onto the peg",
    "basketball-v3": "dunk the basketball into the basket",
    "bin-picking-v3": "pick the puck out of one bin and place it into the other bin",
    "box-close-v3": "pick up the lid and close the box with it",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-topdown-wall-v3": "reach over the wall and press the button from the top",
    "button-press-v3": "press the button from the front",
    "button-press-wall-v3": "reach past the wall and press the button from the front",
    "coffee-button-v3": "push the button on the coffee machine",
    "coffee-pull-v3": "pull the mug out from under the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "turn the dial",
    "disassemble-v3": "pick the nut up and off the peg",
    "door-close-v3": "close the door",
    "door-lock-v3": "lock the door by turning the lock",
    "door-open-v3": "open the door",
    "door-unlock-v3": "unlock the door by turning the lock",
    "hand-insert-v3": "insert the gripper into the hole",
    "drawer-close-v3": "push the drawer closed",
    "drawer-open-v3": "open the drawer",
    "faucet-open-v3": "open the faucet by rotating it counter-clockwise",
    "faucet-close-v3": "close the faucet by rotating it clockwise",
    "hammer-v3": "hammer the nail into the wall",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "pick-place-wall-v3": "pick up the puck and place it at the goal behind the wall",
    "pick-out-of-hole-v3": "pick the peg up out of the hole",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "plate-slide-v3": "slide the plate into the cabinet",
    "plate-slide-side-v3": "slide the plate sideways into the cabinet",
    "plate-slide-back-v3": "slide the plate back out of the cabinet",
    "plate-slide-back-side-v3": "slide the plate sideways back out of the cabinet",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "peg-unplug-side-v3": "unplug the peg from the side",
    "soccer-v3": "kick the soccer ball into the goal",
    "stick-push-v3": "grasp the stick and push the thermos to the goal with it",
    "stick-pull-v3": "grasp the stick and pull the thermos to the goal with it",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck around the wall to the goal",
    "push-back-v3": "pull the puck back to the goal",
    "reach-v3": "reach the goal position",
    "reach-wall-v3": "reach over the wall to the goal position",
    "shelf-place-v3": "pick up the puck and place it on the shelf",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
}

#: Task name -> Meta-World scripted expert class.
EXPERT_POLICIES: dict[str, type] = {task: _ENV_POLICY_MAP[task] for task in ALL_TASKS}

OBS_DIM = 39
ACTION_DIM = 4
MAX_EPISODE_STEPS = int(SawyerXYZEnv.max_path_length)  # 500
#: Control frequency (Meta-World's ``metadata["render_fps"]``: 80 Hz).
FPS = int(SawyerXYZEnv.metadata["render_fps"])


def resolve_tasks(spec: str | Sequence[str]) -> list[str]:
    """Turn ``"mt10"``, ``"mt50"`` (``"mt25"``, ``"ml45-train"``, ``"ml45-test"``, ...),
    ``"reach-v3,push-v3"`` or a list of names
    into a list of task names (order preserved, duplicates removed)."""
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in TASK_SETS:
            return list(TASK_SETS[key])
        names = [s.strip() for s in spec.split(",") if s.strip()]
    else:
        names = []
        for s in spec:
            if not isinstance(s, str):
                raise ConfigError(f"task names must be strings, got {s!r}")
            if s.strip().lower() in TASK_SETS:
                names.extend(TASK_SETS[s.strip().lower()])
            else:
                names.append(s.strip())
    if not names:
        raise ConfigError("empty task specification")
    unknown = [n for n in names if n not in EXPERT_POLICIES]
    if unknown:
        raise ConfigError(
            f"unknown Meta-World task(s) {unknown}. Use one of the task sets "
            f"{sorted(TASK_SETS)} or a comma-separated list of names from: {', '.join(ALL_TASKS)}"
        )
    return list(dict.fromkeys(names))


# --------------------------------------------------------------------------------------
# Seeds: demonstration and evaluation ranges are disjoint
# --------------------------------------------------------------------------------------

#: Size of each seed range. Seeds are (task index, run seed, counter) packed into a range.
SEED_SPAN = 10**12
DEMO_SEED_BASE = 1 * SEED_SPAN
EVAL_SEED_BASE = 2 * SEED_SPAN
_TASK_STRIDE = 64  # >= number of tasks
_COUNTER_STRIDE = 1_000_000  # attempts / episodes per (task, run seed)
_MAX_RUN_SEED = SEED_SPAN // (_TASK_STRIDE * _COUNTER_STRIDE)  # 15625


def _pack_seed(base: int, task: str, index: int, seed: int) -> int:
    if task not in EXPERT_POLICIES:
        resolve_tasks([task])  # raises with the list of valid names
    if not 0 <= index < _COUNTER_STRIDE:
        raise ConfigError(f"episode/attempt index must be in [0, {_COUNTER_STRIDE}), got {index}")
    if not 0 <= seed < _MAX_RUN_SEED:
        raise ConfigError(f"seed must be in [0, {_MAX_RUN_SEED}), got {seed}")
    return base + (seed * _TASK_STRIDE + ALL_TASKS.index(task)) * _COUNTER_STRIDE + index


def demo_seed(task: str, index: int, seed: int = 0) -> int:
    """Environment seed of the ``index``-th demonstration attempt for ``task`` under run
    seed ``seed``. Always inside the demonstration range."""
    return _pack_seed(DEMO_SEED_BASE, task, index, seed)


def eval_seed(task: str, index: int, seed: int = 0) -> int:
    """Environment seed of the ``index``-th evaluation episode for ``task`` under run seed
    ``seed``. Always inside the evaluation range (disjoint from every demo seed)."""
    return _pack_seed(EVAL_SEED_BASE, task, index, seed)


def seed_split(env_seed: int) -> str | None:
    """``"demo"``, ``"eval"`` or ``None`` for a seed outside both ranges."""
    if DEMO_SEED_BASE <= env_seed < DEMO_SEED_BASE + SEED_SPAN:
        return "demo"
    if EVAL_SEED_BASE <= env_seed < EVAL_SEED_BASE + SEED_SPAN:
        return "eval"
    return None


# --------------------------------------------------------------------------------------
# Scripted experts
# --------------------------------------------------------------------------------------


TCP_AIMED_TASKS = frozenset({"reach-v3"})
"""Tasks whose success is the TCP (between the fingers) within 5 cm of the goal, while Meta-World's
scripted expert drives the *hand* (obs[0:3], 4.5 cm above the TCP) onto it: its demonstrations
succeed by a few millimetres. Given the TCP, the expert aims the TCP instead."""


class ScriptedExpert:
    """Meta-World's scripted policy for one task; returns float32 actions clipped to [-1, 1].

    Deterministic (a pure function of the observation, and of the TCP position for the
    :data:`TCP_AIMED_TASKS`). Feed it the env's full-precision observation
    (:attr:`MetaWorldEnv.raw_obs`) to reproduce Meta-World's expert exactly; with ``tcp``
    (:attr:`MetaWorldEnv.tcp_center`) a reach expert puts the TCP, not the hand, on the goal.
    """

    def __init__(self, task: str):
        if task not in EXPERT_POLICIES:
            resolve_tasks([task])
        self.task = task
        self.policy = EXPERT_POLICIES[task]()

    def __call__(self, obs: np.ndarray, tcp: np.ndarray | None = None) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float64)
        if tcp is not None and self.task in TCP_AIMED_TASKS:
            obs = obs.copy()
            obs[:3] = tcp  # the expert moves this point onto the goal; it moves with the hand
        with warnings.catch_warnings():
            # metaworld.policies.move() warns whenever a gain saturates; we clip anyway.
            warnings.simplefilter("ignore")
            action = self.policy.get_action(obs)
        return np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)


# --------------------------------------------------------------------------------------
# Single environment
# --------------------------------------------------------------------------------------

#: Fixed cameras of Meta-World's scene whose images come out rotated by 180 degrees
#: (their up vector points down in the XML); rendering rotates them back.
UPSIDE_DOWN_CAMERAS = frozenset({"corner", "corner2", "corner3", "corner4"})
CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")


class MetaWorldEnv:
    """One Meta-World v3 task with the goal observable (as in the MT benchmarks).

    ``reset(seed)`` places objects/goal from the seed (see the module docstring);
    ``step(action)`` returns ``(obs, reward, success, done, info)`` with ``obs`` a 39-d
    float32 vector, ``success = info["success"]`` of this step, and ``done`` true at the
    step limit (``max_steps``, default 500). Episodes do not end on success here; see
    :class:`MetaWorldBatch` for evaluation semantics.
    """

    def __init__(self, task: str, seed: int | None = None, max_steps: int = MAX_EPISODE_STEPS):
        (self.task,) = resolve_tasks([task])
        self.instruction = INSTRUCTIONS[self.task]
        self.max_steps = int(max_steps)
        env = _mw_env_dict.ALL_V3_ENVIRONMENTS[self.task]()
        # Goal-observable, as metaworld's MT benchmarks (partially_observable=False).
        env._partially_observable = False
        env.__dict__.pop("sawyer_observation_space", None)  # cached_property: recompute
        env.observation_space = env.sawyer_observation_space
        env._set_task_called = True
        env.max_path_length = max(self.max_steps, MAX_EPISODE_STEPS)
        self.env = env
        self.seed: int | None = None
        self.initial_condition: np.ndarray | None = None
        self.raw_obs: np.ndarray | None = None
        self.steps = 0
        self._renderers: dict[tuple[int, int], Any] = {}
        if seed is not None:
            self.reset(seed)

    @property
    def tcp_center(self) -> np.ndarray:
        """(3,) position of the tool centre point (between the finger pads), which reach success measures."""
        return np.array(self.env.tcp_center, dtype=np.float64)

    # -- core API ------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> np.ndarray:
        """Reset to the initial condition of ``seed`` (default: the last seed used)."""
        if seed is None:
            seed = self.seed
        if seed is None:
            raise ValueError("MetaWorldEnv.reset needs a seed (no previous seed to reuse)")
        seed = int(seed)
        if seed < 0:
            raise ConfigError(f"seed must be non-negative, got {seed}")
        env = self.env
        env.seed(seed)  # env.np_random <- seed
        env.seeded_rand_vec = True
        env._freeze_rand_vec = False  # draw the object/goal vector from env.np_random...
        try:
            obs, _ = env.reset()
        finally:
            env._freeze_rand_vec = True  # ...and keep it for any later plain env.reset()
        self.seed = seed
        self.initial_condition = np.array(env._last_rand_vec, dtype=np.float64, copy=True)
        self.raw_obs = np.asarray(obs, dtype=np.float64)
        self.steps = 0
        return self.raw_obs.astype(np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self.raw_obs is None:
            raise RuntimeError("call reset(seed) before step()")
        if self.steps >= self.max_steps:
            raise RuntimeError(f"episode is over ({self.max_steps} steps); call reset()")
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if action.shape != (ACTION_DIM,):
            raise ConfigError(f"expected a {ACTION_DIM}-d action, got shape {action.shape}")
        action = np.clip(action, -1.0, 1.0)
        obs, reward, _terminated, _truncated, info = self.env.step(action)
        self.steps += 1
        self.raw_obs = np.asarray(obs, dtype=np.float64)
        success = bool(info["success"])
        done = self.steps >= self.max_steps
        return self.raw_obs.astype(np.float32), float(reward), success, done, info

    @property
    def obs(self) -> np.ndarray:
        if self.raw_obs is None:
            raise RuntimeError("call reset(seed) first")
        return self.raw_obs.astype(np.float32)

    # -- rendering -----------------------------------------------------------------------
    def render(self, camera_name: str = "corner2", size: int | tuple[int, int] = 128) -> np.ndarray:
        """RGB image ``(H, W, 3)`` uint8 of the current state from a named camera.

        ``size`` is an int (square) or ``(height, width)``. Uses fast offscreen settings
        (no shadows/reflections, no multisampling: ~5-10 ms per frame on one CPU core with
        EGL). Images of the fixed corner cameras are rotated back upright.
        """
        if isinstance(size, int):
            height, width = size, size
        else:
            height, width = (int(s) for s in size)
        renderer = self._renderers.get((height, width))
        if renderer is None:
            model = self.env.model
            model.vis.quality.offsamples = 0
            model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), width)
            model.vis.global_.offheight = max(int(model.vis.global_.offheight), height)
            renderer = mujoco.Renderer(model, height=height, width=width)
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
            self._renderers[(height, width)] = renderer
            _track_renderer(self)
        renderer.update_scene(self.env.data, camera=camera_name)
        image = renderer.render()
        if camera_name in UPSIDE_DOWN_CAMERAS:
            image = image[::-1, ::-1]
        return np.ascontiguousarray(image)

    def close_renderers(self) -> None:
        for renderer in self._renderers.values():
            try:
                renderer.close()
            except Exception:  # noqa: BLE001 - best effort: a renderer that fails to close is dropped anyway
                pass
        self._renderers.clear()

    def close(self) -> None:
        self.close_renderers()
        try:
            self.env.close()
        except Exception:  # noqa: BLE001 - best effort on shutdown
            pass

    def __repr__(self) -> str:
        return f"MetaWorldEnv(task={self.task!r}, seed={self.seed}, steps={self.steps})"


# Close offscreen GL contexts before interpreter teardown: their finalizers otherwise
# print EGL errors at exit. The handler is registered after the first GL context exists,
# so that it runs before mujoco's own atexit ``eglTerminate`` (atexit is LIFO).
_RENDERING_ENVS: weakref.WeakSet[MetaWorldEnv] = weakref.WeakSet()
_ATEXIT_REGISTERED = False


def _close_renderers() -> None:
    for env in list(_RENDERING_ENVS):
        env.close_renderers()


def _track_renderer(env: MetaWorldEnv) -> None:
    global _ATEXIT_REGISTERED
    _RENDERING_ENVS.add(env)
    if not _ATEXIT_REGISTERED:
        atexit.register(_close_renderers)
        _ATEXIT_REGISTERED = True


_IC_ENVS: dict[str, MetaWorldEnv] = {}


def initial_condition(task: str, seed: int) -> np.ndarray:
    """The object/goal vector (Meta-World's ``rand_vec``) that ``seed`` gives ``task``.

    Uses one cached env per task in this process (reset is a few milliseconds)."""
    (task,) = resolve_tasks([task])
    env = _IC_ENVS.get(task)
    if env is None:
        env = _IC_ENVS[task] = MetaWorldEnv(task)
    env.reset(seed)
    assert env.initial_condition is not None
    return env.initial_condition.copy()


# --------------------------------------------------------------------------------------
# Batch of environments for evaluation
# --------------------------------------------------------------------------------------


class MetaWorldBatch:
    """N Meta-World envs (any mix of tasks) stepped together in-process.

    ``step(actions)`` takes ``(N, 4)`` and returns ``(obs (N, 39) float32, success (N,)
    bool, done (N,) bool)``. ``success[i]`` becomes true as soon as ``info["success"]``
    is true once in env ``i``'s episode (and stays true); env ``i`` is done at success
    or after ``max_steps`` steps. Done envs are not stepped again (their rows in later
    calls repeat their last observation and their action rows are ignored).
    """

    def __init__(self, tasks: Sequence[str], seeds: Sequence[int], max_steps: int = MAX_EPISODE_STEPS):
        tasks = list(tasks)
        seeds = [int(s) for s in seeds]
        if len(tasks) != len(seeds):
            raise ValueError(f"got {len(tasks)} tasks but {len(seeds)} seeds")
        if not tasks:
            raise ValueError("MetaWorldBatch needs at least one env")
        self.tasks = [resolve_tasks([t])[0] for t in tasks]
        self.seeds = seeds
        self.max_steps = int(max_steps)
        self.instructions = [INSTRUCTIONS[t] for t in self.tasks]
        self.envs = [MetaWorldEnv(t, max_steps=self.max_steps) for t in self.tasks]
        self._experts: dict[str, ScriptedExpert] = {}
        self.reset()

    def __len__(self) -> int:
        return len(self.envs)

    def reset(self) -> np.ndarray:
        n = len(self.envs)
        self.obs = np.stack([env.reset(seed) for env, seed in zip(self.envs, self.seeds)])
        self.success = np.zeros(n, dtype=bool)
        self.done = np.zeros(n, dtype=bool)
        self.steps = np.zeros(n, dtype=np.int64)
        #: Step count (1-based) at which each env first succeeded, -1 if not (yet).
        self.success_step = np.full(n, -1, dtype=np.int64)
        self.rewards = np.zeros(n, dtype=np.float64)  # undiscounted return so far
        return self.obs.copy()

    @property
    def initial_conditions(self) -> list[np.ndarray]:
        return [env.initial_condition.copy() for env in self.envs]  # type: ignore[union-attr]

    @property
    def all_done(self) -> bool:
        return bool(self.done.all())

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        actions = np.asarray(actions, dtype=np.float32)
        if actions.shape != (len(self.envs), ACTION_DIM):
            raise ConfigError(f"expected actions of shape {(len(self.envs), ACTION_DIM)}, got {actions.shape}")
        for i, env in enumerate(self.envs):
            if self.done[i]:
                continue
            obs, reward, success, done, _ = env.step(actions[i])
            self.obs[i] = obs
            self.steps[i] += 1
            self.rewards[i] += reward
            if success and not self.success[i]:
                self.success[i] = True
                self.success_step[i] = self.steps[i]
            self.done[i] = self.success[i] or done
        return self.obs.copy(), self.success.copy(), self.done.copy()

    def expert_actions(self, aim_tcp: bool = True) -> np.ndarray:
        """Scripted-expert actions ``(N, 4)`` for the current states (zeros for done envs); ``aim_tcp``
        False: Meta-World's expert as it ships, from the observation alone (see :data:`TCP_AIMED_TASKS`)."""
        out = np.zeros((len(self.envs), ACTION_DIM), dtype=np.float32)
        for i, env in enumerate(self.envs):
            if self.done[i]:
                continue
            expert = self._experts.get(env.task)
            if expert is None:
                expert = self._experts[env.task] = ScriptedExpert(env.task)
            out[i] = expert(env.raw_obs, env.tcp_center if aim_tcp else None)
        return out

    def render(self, camera_name: str = "corner2", size: int | tuple[int, int] = 128) -> np.ndarray:
        """Images ``(N, H, W, 3)`` uint8 of all envs (done envs show their final state)."""
        return np.stack([env.render(camera_name, size) for env in self.envs])

    def close(self) -> None:
        for env in self.envs:
            env.close()
