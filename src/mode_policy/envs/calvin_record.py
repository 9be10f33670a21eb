"""Scripted CALVIN demonstrations, recorded in CALVIN's own dataset layout.

:func:`record_scripted_demos` plays chains of subtasks in the real simulator with
:class:`~mode_policy.envs.calvin_scripted.CalvinExpert`, the way the evaluation plays them:
from one of the protocol's symbolic initial scenes (blocks nudged a little, so no scene is an
evaluation scene exactly), a random chain of 5 subtasks obeying the evaluation's rules
(:func:`~mode_policy.envs.calvin.valid_chain`, distinct categories), each subtask ending the
step calvin_env's task oracle sees it done, the next starting from there. A chain stops at its
first failure; a failed subtask's frames are dropped. The split folder it writes::

    <out>/training/episode_XXXXXXX.npz   one per frame: actions (7,) absolute TCP target,
                                         rel_actions (7,), robot_obs (15,), scene_obs (24,)
                                         [, rgb_static (200, 200, 3), rgb_gripper (84, 84, 3)]
    <out>/training/ep_start_end_ids.npy  (chains, 2) first and last frame of each chain
    <out>/training/lang_annotations/auto_lang_ann.npy
        {"info": {"indx": [(start, end)], "episodes": []}, "language": {"ann": [...], "task": [...]}}
    <out>/training/scripted_demos.json   settings and the expert's successes per subtask

Windows are inclusive frame ranges; each is labelled with one of CALVIN's *training*
annotations of its subtask (:data:`~mode_policy.envs.calvin_annotations.TRAIN_INSTRUCTIONS`),
picked at random. ``mode-policy convert calvin <out>/training`` turns it into a dataset.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..fileio import atomic_write_json, replacing
from .calvin import (
    CAMERAS,
    CHAIN_LENGTH,
    TASK_ORACLE_SPEC,
    check_task_subset,
    get_env_state_for_initial_condition,
    initial_conditions,
    valid_chain,
)
from .calvin_annotations import TRAIN_INSTRUCTIONS
from .calvin_scripted import SCRIPTED_TASKS, CalvinExpert, check_tasks, run_subtask
from .calvin_sim import import_calvin_env, make_calvin_env

__all__ = ["jittered_scene", "record_scripted_demos", "sample_chain"]

EP_LEN = 360  # steps a subtask may take, as in the evaluation
_MAX_MISSES = 50  # scenes in a row without a chain before the recorder gives up
_TABLE_BLOCK_Z = 0.47  # a block whose centre is lower than this rests on the table (or the cabinet's floor)


def sample_chain(
    condition: dict[str, Any],
    tasks: Sequence[str],
    rng: np.random.Generator,
    wanted: set[str] | None = None,
    tries: int = 20_000,
) -> tuple[str, ...] | None:
    """A random valid chain of 5 of ``tasks`` from the symbolic scene ``condition`` (the
    evaluation's rules), containing a task of ``wanted`` when given; None if none was found."""
    pool = list(tasks)
    for _ in range(tries):
        chain = tuple(pool[i] for i in rng.permutation(len(pool))[:CHAIN_LENGTH])
        if (wanted is None or wanted.intersection(chain)) and valid_chain(condition, chain):
            return chain
    return None


def jittered_scene(condition: dict[str, Any], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The protocol's ``(robot_obs, scene_obs)`` of ``condition`` with the blocks on the table
    moved by up to 1 cm and turned by up to 0.15 rad."""
    robot_obs, scene_obs = get_env_state_for_initial_condition(condition)
    for k, color in enumerate(("red", "blue", "pink")):
        if condition[f"{color}_block"] == "table":
            base = 6 + 6 * k
            scene_obs[base : base + 2] += rng.uniform(-0.01, 0.01, 2)
            scene_obs[base + 5] += rng.uniform(-0.15, 0.15)
    return robot_obs, scene_obs


class _Frames:
    """Frames of the subtask being recorded, committed to disk once it succeeds."""

    def __init__(self, folder: Path, env: Any, cameras: Sequence[str]) -> None:
        self.folder, self.env, self.cameras = folder, env, list(cameras)
        self.next_index = 0
        self.pending: list[dict[str, np.ndarray]] = []

    def add(self, state_obs: dict[str, np.ndarray], action: np.ndarray) -> None:
        robot = self.env.robot
        target_pos = np.asarray(robot.target_pos) + action[:3] * robot.max_rel_pos  # what the env will aim at
        target_orn = np.asarray(robot.target_orn) + action[3:6] * robot.max_rel_orn
        frame = {
            "actions": np.r_[target_pos, (target_orn + np.pi) % (2 * np.pi) - np.pi, action[6]],
            "rel_actions": np.asarray(action, dtype=np.float64).copy(),
            "robot_obs": np.asarray(state_obs["robot_obs"], dtype=np.float64),
            "scene_obs": np.asarray(state_obs["scene_obs"], dtype=np.float64),
        }
        if self.cameras:
            rgb, _ = self.env.get_camera_obs()
            frame.update({f"rgb_{c}": rgb[f"rgb_{c}"] for c in self.cameras})
        self.pending.append(frame)

    def commit(self) -> tuple[int, int]:
        """Write the pending frames; their (first, last) index."""
        first = self.next_index
        for frame in self.pending:
            np.savez_compressed(self.folder / f"episode_{self.next_index:07d}.npz", **frame)
            self.next_index += 1
        self.pending = []
        return first, self.next_index - 1


def record_scripted_demos(
    out_dir: str | Path,
    episodes_per_task: int = 20,
    tasks: Sequence[str] = SCRIPTED_TASKS,
    seed: int = 0,
    *,
    image_keys: Sequence[str] = (),
    renderer: str = "egl",
    max_chains: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    env: Any = None,
    on_chain: Callable[[int, Sequence[str], int], None] | None = None,
) -> dict[str, Any]:
    """Record chains until every task of ``tasks`` has ``episodes_per_task`` successful
    windows (or ``max_chains`` chains were played: default 2 x episodes_per_task x len(tasks));
    see the module docstring. ``image_keys`` (``observation.images.static`` / ``.gripper``)
    also records those cameras (slow: rendering); default physics only. ``env`` is a scene-D
    ``PlayTableSimEnv`` to use instead of building one. Returns the summary it writes."""
    from tqdm.auto import tqdm

    tasks = check_tasks(tasks)
    check_task_subset(tasks)  # a chain needs 5 categories
    if episodes_per_task < 1:
        raise ConfigError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
    cameras = [CAMERAS[k].removeprefix("rgb_") for k in image_keys] if image_keys else []
    unknown = [k for k in image_keys if k not in CAMERAS]
    if unknown:
        raise ConfigError(f"unknown CALVIN camera key(s) {unknown}; available: {list(CAMERAS)}")
    limit = max_chains if max_chains is not None else 2 * episodes_per_task * len(tasks)
    oracle = import_calvin_env().Tasks(TASK_ORACLE_SPEC)
    env = env if env is not None else make_calvin_env(list(image_keys), scene="D", renderer=renderer)
    rng = np.random.default_rng(seed)
    expert = CalvinExpert(env, rng)
    scenes = initial_conditions()
    successes: Counter[str] = Counter()
    attempts: Counter[str] = Counter()
    windows: list[tuple[int, int]] = []
    anns: list[str] = []
    names: list[str] = []
    chain_ids: list[tuple[int, int]] = []
    chains_played = 0
    misses = 0  # scenes in a row where no chain held a wanted task
    out_dir = Path(out_dir)
    with replacing(out_dir, overwrite) as root:
        split = root / "training"
        (split / "lang_annotations").mkdir(parents=True)
        frames = _Frames(split, env, cameras)
        bar = tqdm(
            total=episodes_per_task * len(tasks), desc="scripted CALVIN demos", unit="window", disable=not progress
        )
        with bar:
            while chains_played < limit:
                wanted = {t for t in tasks if successes[t] < episodes_per_task}
                if not wanted:
                    break
                condition = scenes[rng.integers(len(scenes))]
                chain = sample_chain(condition, tasks, rng, wanted)
                if chain is None:
                    misses += 1
                    if misses >= _MAX_MISSES:
                        raise ConfigError(
                            f"no valid chain of {CHAIN_LENGTH} of {tasks} holding any of {sorted(wanted)} "
                            f"was found from {misses} scenes in a row: add subtasks that lead to them"
                        )
                    continue
                misses = 0
                chains_played += 1
                env.reset(*jittered_scene(condition, rng))
                first = frames.next_index
                done = 0
                for task in chain:
                    attempts[task] += 1
                    ok, _ = run_subtask(env, expert, oracle, task, EP_LEN, frames.add)
                    if not ok:
                        frames.pending = []
                        break
                    windows.append(frames.commit())
                    anns.append(str(rng.choice(TRAIN_INSTRUCTIONS[task])))
                    names.append(task)
                    if successes[task] < episodes_per_task:
                        bar.update(1)
                    successes[task] += 1
                    done += 1
                if frames.next_index > first:
                    chain_ids.append((first, frames.next_index - 1))
                if on_chain is not None:
                    on_chain(chains_played, chain, done)
        if not windows:
            raise ConfigError("the scripted expert completed no subtask: nothing to record")
        np.save(split / "ep_start_end_ids.npy", np.asarray(chain_ids, dtype=np.int64))
        lang = {"info": {"indx": windows, "episodes": []}, "language": {"ann": anns, "task": names}}
        np.save(split / "lang_annotations" / "auto_lang_ann.npy", np.array(lang, dtype=object), allow_pickle=True)
        summary = {
            "scene": "D",
            "seed": seed,
            "episodes_per_task": episodes_per_task,
            "tasks": tasks,
            "cameras": cameras,
            "chains": chains_played,
            "frames": frames.next_index,
            "windows": len(windows),
            "per_task": {t: {"successes": successes[t], "attempts": attempts[t]} for t in tasks},
            "short": sorted(t for t in tasks if successes[t] < episodes_per_task),
        }
        atomic_write_json(split / "scripted_demos.json", summary)
    return summary
