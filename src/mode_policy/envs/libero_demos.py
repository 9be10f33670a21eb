"""Scripted LIBERO demonstrations written as a LeRobotDataset (v3.0), resumable and parallel.

:func:`generate_libero_demos` plays :class:`~mode_policy.envs.libero_experts.LiberoExpert` in the
real LIBERO simulator and keeps only the episodes that reach the task's goal.

Initial placements are drawn by LIBERO's own ``env.reset()`` (its placement samplers, seeded
with ``env.seed``): attempt ``a`` of task ``t`` uses the seed :func:`demo_seed`, from a range
(>= :data:`DEMO_SEED_BASE`) that the evaluation's ``env.seed(seed + rollout)`` never reaches, and
a placement equal to one of the benchmark's fixed evaluation initial states of the task is
refused. Like the evaluation, an episode starts with ``num_settle_steps`` no-op steps (not
recorded), then the expert acts until the env reports success or the suite's step limit.

Each frame holds exactly what the evaluation feeds a policy (:func:`~mode_policy.envs.libero.libero_observation`):
``observation.state`` (8,) float32, ``observation.images.agentview`` and ``observation.images.wrist``
(``image_size`` px, rotated by 180 degrees like the converted LIBERO datasets), the task's
instruction as the LeRobot ``task``, and the 7-D ``action`` the expert executed; the feature
spec is the converter's (:func:`~mode_policy.data.convert_libero.features_for`). Rendering uses
:func:`~mode_policy.envs.libero.libero_render_settings`, as the evaluation does.

Resumable: each finished attempt is logged (``attempts.jsonl``) and each kept episode saved
(``task<t>_attempt<a>.npz``) in a work folder beside the output (``.<name>.parts``); a killed
run started again with the same settings continues there, and the dataset is written (task by
task, attempts in order: the same dataset whatever the number of workers or interruptions)
once every task has its episodes, after which the work folder is removed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import ACTION_KEY, STATE_KEY
from ..errors import ConfigError, DataError, SimulatorError
from ..evaluation.workers import LoudPool
from ..fileio import atomic_write, atomic_write_json, read_jsonl
from .libero import (
    CAMERAS,
    DEFAULT_MAX_STEPS,
    DUMMY_ACTION,
    FPS,
    SUITE_MAX_STEPS,
    image_convention,
    import_libero,
    libero_observation,
    load_init_states,
    load_suite,
    make_libero_env,
)

__all__ = [
    "DEMO_SEED_BASE",
    "DemoEpisode",
    "demo_seed",
    "generate_libero_demos",
    "matches_init_state",
    "run_demo_episode",
    "work_folder",
]

#: Demonstration env seeds start here (the evaluation seeds rollouts with seed + rollout index).
DEMO_SEED_BASE = 1_000_000
LOG_NAME = "attempts.jsonl"
SETTINGS_NAME = "settings.json"


def demo_seed(task_id: int, attempt: int, seed: int = 0) -> int:
    """Env seed of attempt ``attempt`` for task ``task_id`` (distinct for every task, attempt and
    run seed below 100)."""
    if not 0 <= attempt < 100_000 or not 0 <= task_id < 100 or not 0 <= seed < 100:
        raise ConfigError(f"demo_seed: attempt {attempt}, task {task_id} or seed {seed} out of range")
    return DEMO_SEED_BASE + seed * 10_000_000 + task_id * 100_000 + attempt


def matches_init_state(state: np.ndarray, init_states: np.ndarray, tol: float = 1e-6) -> bool:
    """Whether a flattened sim state equals (within ``tol``) one of the fixed initial states."""
    init_states = np.asarray(init_states)
    if init_states.ndim != 2 or init_states.shape[1] != np.asarray(state).shape[-1]:
        return False
    return bool(np.abs(init_states - np.asarray(state)[None]).max(axis=1).min() <= tol)


def work_folder(out_dir: str | Path) -> Path:
    """The work folder a generation into ``out_dir`` resumes from: ``.<name>.parts`` beside it."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f".{out_dir.name}.parts")


@dataclass
class DemoEpisode:
    task_id: int
    attempt: int
    seed: int
    success: bool
    length: int  # recorded frames (policy steps)
    frames: dict[str, np.ndarray] | None = None  # successes only


def run_demo_episode(
    env: Any,
    instruction: str,
    task_id: int,
    attempt: int,
    seed: int,
    init_states: np.ndarray,
    max_steps: int,
    num_settle_steps: int = 10,
    image_keys: Sequence[str] = tuple(CAMERAS),
    convention: str = "opengl",
    keep_failed_frames: bool = False,
) -> DemoEpisode:
    """One expert episode from LIBERO's ``reset()`` placement of ``seed``; frames (observation
    batch of the evaluation's format, action) are returned for a success (and for a failure
    if ``keep_failed_frames``)."""
    from .libero_experts import LiberoExpert

    env_seed = demo_seed(task_id, attempt, seed)
    env.seed(env_seed)
    with contextlib.redirect_stdout(io.StringIO()):  # LIBERO prints sampler warnings
        env.reset()
    for robot in getattr(env, "env", env).robots:
        # a soft reset (an env made with hard_reset=False) keeps the gripper's running command:
        # without this an episode would depend on how the previous one ended
        robot.gripper.current_action = np.zeros(robot.gripper.dof)
    if matches_init_state(env.get_sim_state(), init_states):
        return DemoEpisode(task_id, attempt, env_seed, False, 0)
    obs = None
    for _ in range(max(1, num_settle_steps)):
        obs, _, _, _ = env.step(DUMMY_ACTION.copy())
    expert = LiberoExpert(env)
    states: list[np.ndarray] = []
    images: dict[str, list[np.ndarray]] = {k: [] for k in image_keys}
    actions: list[np.ndarray] = []
    success = False
    for _ in range(max_steps):
        batch = libero_observation([obs], instruction, image_keys, None, convention)
        states.append(batch[STATE_KEY][0].numpy())
        for key in image_keys:
            images[key].append((batch[key][0].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8))
        action = np.clip(expert(), -1.0, 1.0)
        actions.append(action.astype(np.float32))
        obs, _, done, _ = env.step(action)
        if done:
            success = True
            break
    if not (success or keep_failed_frames):
        return DemoEpisode(task_id, attempt, env_seed, False, len(actions))
    frames = {STATE_KEY: np.stack(states).astype(np.float32), ACTION_KEY: np.stack(actions)}
    frames |= {key: np.stack(images[key]) for key in image_keys}
    return DemoEpisode(task_id, attempt, env_seed, success, len(actions), frames)


# --------------------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------------------

_CACHE: dict[str, Any] = {}


def _worker_env(suite: str, task_id: int, image_size: int, max_steps: int, fast_render: bool) -> tuple[Any, ...]:
    """(env, instruction, init states) of a task, cached per worker (one env at a time)."""
    key = f"{suite}/{task_id}/{image_size}/{fast_render}"
    if _CACHE.get("key") != key:
        if _CACHE.get("env") is not None:
            with contextlib.suppress(Exception):
                _CACHE["env"].close()
        lib = import_libero()
        task_suite = load_suite(lib, suite)
        task = task_suite.get_task(task_id)
        bddl = Path(lib.get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
        cameras = list(CAMERAS.values())
        # LIBERO's hard reset: its soft reset draws objects placed on a fixture (a bowl on the
        # stove, in a drawer, on the cabinet) far from it, where they fall
        with contextlib.redirect_stdout(io.StringIO()):
            env = make_libero_env(
                lib, bddl, cameras, image_size, max_steps + 100, fast_render=fast_render, hard_reset=True
            )
        _CACHE.update(
            key=key,
            env=env,
            instruction=task.language,
            init_states=load_init_states(lib, task_suite, task_id),
            convention=image_convention(),
        )
    return _CACHE["env"], _CACHE["instruction"], _CACHE["init_states"], _CACHE["convention"]


def _save_episode(path: Path, episode: DemoEpisode) -> None:
    assert episode.frames is not None

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **{k.replace(".", "__"): v for k, v in episode.frames.items()})

    atomic_write(path, write)


def _load_episode(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as data:
            return {k.replace("__", "."): data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: unreadable demonstration part ({e}); delete it to record it again") from None


def _part_name(task_id: int, attempt: int) -> str:
    return f"task{task_id:02d}_attempt{attempt:05d}.npz"


def _run_attempt(job: tuple[str, int, int, int, int, int, bool, str]) -> dict[str, Any]:
    """Play one attempt in a worker; a success is saved into the work folder. Returns its log record."""
    suite, task_id, attempt, seed, image_size, max_steps, fast_render, folder = job
    env, instruction, init_states, convention = _worker_env(suite, task_id, image_size, max_steps, fast_render)
    episode = run_demo_episode(env, instruction, task_id, attempt, seed, init_states, max_steps, convention=convention)
    if episode.success:
        _save_episode(Path(folder) / _part_name(task_id, attempt), episode)
    return {
        "task": task_id,
        "attempt": attempt,
        "seed": episode.seed,
        "success": episode.success,
        "length": episode.length,
    }


# --------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------


def generate_libero_demos(
    out_dir: str | Path,
    suite: str,
    episodes_per_task: int,
    tasks: Sequence[int] | None = None,
    seed: int = 0,
    workers: int = 1,
    image_size: int = 128,
    max_steps: int | None = None,
    fast_render: bool = True,
    max_attempts_per_task: int | None = None,
    progress: bool = True,
    work_dir: str | Path | None = None,
    start_method: str = "spawn",
    overwrite: bool = False,
) -> Path:
    """Generate ``episodes_per_task`` successful scripted demonstrations per task of a suite.

    Args:
        out_dir: dataset folder to write (must not hold a dataset; see the CLI's ``--overwrite``).
        suite: ``libero_object``, ``libero_spatial``, ... (tasks the expert cannot do raise
            :class:`~mode_policy.envs.libero_experts.UnsupportedTaskError` before any work).
        episodes_per_task: successful episodes kept per task.
        tasks: task indices (default: all of the suite), in LIBERO's default order.
        seed: run seed (< 100); env seeds are :func:`demo_seed`.
        workers: processes playing episodes in parallel (each holds one rendering env, ~1 GB).
        image_size: side of the camera images (LIBERO's datasets use 128).
        max_steps: policy steps per episode (default: the suite's evaluation limit).
        fast_render: render with :func:`~mode_policy.envs.libero.libero_render_settings`
            (False: LIBERO's own settings); use the same setting to evaluate.
        max_attempts_per_task: give up (:class:`~mode_policy.errors.SimulatorError`) after this
            many attempts of one task; default ``2 * episodes_per_task + 10``.
        work_dir: where progress is kept (default :func:`work_folder` of ``out_dir``).
        start_method: multiprocessing start method for ``workers > 1``.
        overwrite: replace a dataset already at ``out_dir`` (else that is an error).

    Returns:
        The dataset folder.
    """
    from tqdm.auto import tqdm

    from ..data.convert_libero import features_for
    from ..data.writer import DatasetWriter
    from .libero_experts import plan_task

    suite = suite.strip().lower()
    if episodes_per_task < 1:
        raise ConfigError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if int(image_size) != image_size or image_size < 8:
        raise ConfigError(f"image_size must be an integer >= 8, got {image_size!r}")
    if not 0 <= seed < 100:
        raise ConfigError(f"seed must be in [0, 100), got {seed}")
    lib = import_libero()
    task_suite = load_suite(lib, suite)
    task_ids = list(range(task_suite.n_tasks)) if tasks is None else [int(t) for t in tasks]
    bad = [t for t in task_ids if not 0 <= t < task_suite.n_tasks]
    if bad or not task_ids:
        raise ConfigError(f"task index(es) {bad or task_ids} invalid: {suite} has {task_suite.n_tasks} tasks")
    from libero.libero.envs.bddl_utils import robosuite_parse_problem

    instructions: dict[int, str] = {}
    for t in task_ids:  # refuse tasks the expert cannot do before any work
        task = task_suite.get_task(t)
        bddl = Path(lib.get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
        problem = robosuite_parse_problem(str(bddl))
        plan_task(problem["goal_state"], {o for objs in problem["objects"].values() for o in objs})
        instructions[t] = task.language
    steps = int(max_steps if max_steps is not None else SUITE_MAX_STEPS.get(suite, DEFAULT_MAX_STEPS))
    max_attempts = max_attempts_per_task or 2 * episodes_per_task + 10
    if max_attempts < episodes_per_task:
        raise ConfigError("max_attempts_per_task must be >= episodes_per_task")

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise DataError(f"{out_dir}: exists and is not an empty folder; pass overwrite=True to replace it")
    folder = Path(work_dir) if work_dir is not None else work_folder(out_dir)
    settings = {
        "suite": suite,
        "seed": seed,
        "image_size": int(image_size),
        "max_steps": steps,
        "fast_render": bool(fast_render),
        "num_settle_steps": 10,
        "reset": "hard",
    }
    folder.mkdir(parents=True, exist_ok=True)
    settings_path = folder / SETTINGS_NAME
    if settings_path.is_file():
        before = json.loads(settings_path.read_text(encoding="utf-8"))
        if before != settings:
            raise ConfigError(
                f"{folder} holds an unfinished generation with other settings ({before}); "
                f"delete it to start over, or rerun with those settings"
            )
    else:
        atomic_write_json(settings_path, settings)
    log_path = folder / LOG_NAME
    records: dict[tuple[int, int], dict[str, Any]] = {}
    for r in read_jsonl(log_path):
        key = (int(r["task"]), int(r["attempt"]))
        if not r["success"] or (folder / _part_name(*key)).is_file():
            records[key] = r

    def kept(t: int) -> list[int]:
        return sorted(a for (tt, a), r in records.items() if tt == t and r["success"])[:episodes_per_task]

    def tried(t: int) -> int:
        return sum(1 for (tt, _) in records if tt == t)

    bar = tqdm(
        total=len(task_ids) * episodes_per_task,
        initial=sum(len(kept(t)) for t in task_ids),
        desc=f"LIBERO demos {suite}",
        unit="ep",
        disable=not progress,
    )
    pool: LoudPool | None = None
    try:
        if workers > 1:
            pool = LoudPool(
                workers,
                "demonstration worker",
                "The episodes finished so far are kept: run the same command again to continue "
                "(with fewer workers if one was killed for memory).",
                start_method,
            )
        with open(log_path, "a", encoding="utf-8") as log:
            while True:
                jobs = []
                for t in task_ids:
                    missing = episodes_per_task - len(kept(t))
                    if missing <= 0:
                        continue
                    if tried(t) >= max_attempts:
                        raise SimulatorError(
                            f"the scripted expert succeeded only {len(kept(t))} times in {tried(t)} attempts of "
                            f"{suite} task {t} (needed {episodes_per_task}); allow more (--max_attempts)"
                        )
                    # the next attempts in order (earlier ones not yet logged are played again)
                    todo = [a for a in range(max_attempts) if (t, a) not in records][:missing]
                    jobs += [(suite, t, a, seed, int(image_size), steps, bool(fast_render), str(folder)) for a in todo]
                if not jobs:
                    break
                results = map(_run_attempt, jobs) if pool is None else pool.unordered(_run_attempt, jobs)
                for record in results:
                    records[(record["task"], record["attempt"])] = record
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    os.fsync(log.fileno())
                    if record["success"] and record["attempt"] in kept(record["task"]):
                        bar.update(1)
                    bar.set_postfix(failed=sum(not r["success"] for r in records.values()))
    finally:
        bar.close()
        if pool is not None:
            pool.close(terminate=True)
        for env in [_CACHE.pop("env", None)]:
            if env is not None:
                with contextlib.suppress(Exception):
                    env.close()
        _CACHE.clear()

    features = features_for((int(image_size), int(image_size)))
    writer = DatasetWriter(out_dir, FPS, features, robot_type="panda", overwrite=True)
    chosen = [(t, a) for t in task_ids for a in kept(t)]
    with writer.removed_on_error(), tqdm(chosen, desc="writing the dataset", unit="ep", disable=not progress) as eps:
        for t, a in eps:  # encoding the camera videos: minutes for a whole suite
            frames = _load_episode(folder / _part_name(t, a))
            r = records[(t, a)]
            extra = {"suite": suite, "task_id": t, "attempt": a, "seed": int(r["seed"]), "expert": "LiberoExpert"}
            writer.add_episode(frames, instructions[t], extra=extra)
        writer.finalize()
    summary = {
        t: {"attempts": tried(t), "successes": sum(1 for (tt, _), r in records.items() if tt == t and r["success"])}
        for t in task_ids
    }
    atomic_write_json(out_dir / "meta" / "libero_expert.json", {"settings": settings, "per_task": summary})
    shutil.rmtree(folder, ignore_errors=True)
    return out_dir
