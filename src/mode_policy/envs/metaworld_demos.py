"""Scripted Meta-World demonstrations written as a LeRobotDataset (v3.0).

:func:`generate_demos` runs Meta-World's scripted expert on seeded initial conditions from
the demonstration seed range (see :mod:`mode_policy.envs.metaworld`), keeps only
successful episodes, and writes them with :class:`mode_policy.data.writer.DatasetWriter`.

Determinism: the ``a``-th attempt for ``task`` uses the env seed
``demo_seed(task, a, seed)``; attempts run in rounds whose size depends only on earlier
results, and each task keeps its first ``episodes_per_task`` successful attempts in
attempt order. Episodes are written task by task in the order of ``tasks``. The output
is therefore the same for any number of ``workers`` and on every rerun.

Per episode the dataset stores ``observation.state`` (39-d float32, the observation the
action was taken in), ``action`` (4-d float32 in [-1, 1], exactly what was executed),
``next.reward`` and ``next.success`` (after the step). The LeRobot ``task`` of an episode
is its natural-language instruction; the episode's ``extra`` metadata records
``env_name`` (e.g. ``"reach-v3"``), ``seed`` (env seed), ``attempt``,
``initial_condition`` (Meta-World's object/goal vector, as a JSON list string; decode with
:func:`episode_initial_condition`) and ``success_step``
(1-based step of the first success).

Camera images (``cameras=("corner", "gripperPOV")``, ``image_size``): each frame also stores
``observation.images.<camera>``, the ``image_size`` x ``image_size`` RGB image of that camera
in the state the action was chosen in (rendered on the CPU with
:meth:`MetaWorldEnv.render`'s fast settings), as a LeRobot video feature (one mp4 per camera,
lossy H.264). Images are rendered in a second pass that replays only the kept episodes
(seeded rollouts of a deterministic expert are exactly reproducible; the replay is checked
against the first pass), so failed attempts are never rendered, and episodes are rendered
and written a few at a time, in dataset order: memory stays at a few episodes' images
(``T * image_size**2 * 3`` bytes per camera and episode) whatever the dataset size. The
state data is identical with or without cameras.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import ACTION_KEY, IMAGES_PREFIX, STATE_KEY
from ..errors import ConfigError, DataError, SimulatorError
from ..evaluation.workers import LoudPool
from .metaworld import (
    ACTION_DIM,
    CAMERAS,
    FPS,
    INSTRUCTIONS,
    MAX_EPISODE_STEPS,
    OBS_DIM,
    MetaWorldEnv,
    ScriptedExpert,
    demo_seed,
    resolve_tasks,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEMO_FEATURES",
    "EpisodeResult",
    "camera_key",
    "demo_features",
    "episode_initial_condition",
    "generate_demos",
    "run_expert_episode",
]

#: Feature spec of the generated datasets (LeRobot ``info.json`` style).
DEMO_FEATURES: dict[str, dict[str, Any]] = {
    STATE_KEY: {"dtype": "float32", "shape": [OBS_DIM], "names": None},
    ACTION_KEY: {"dtype": "float32", "shape": [ACTION_DIM], "names": None},
    "next.reward": {"dtype": "float32", "shape": [1], "names": None},
    "next.success": {"dtype": "bool", "shape": [1], "names": None},
}


def camera_key(camera: str) -> str:
    """Dataset feature name of a Meta-World camera: ``"corner"`` -> ``"observation.images.corner"``."""
    return IMAGES_PREFIX + camera


def _check_cameras(cameras: Sequence[str], image_size: int) -> list[str]:
    if isinstance(cameras, str):
        cameras = [c.strip() for c in cameras.split(",") if c.strip()]
    cameras = list(dict.fromkeys(cameras))
    unknown = [c for c in cameras if c not in CAMERAS]
    if unknown:
        raise ConfigError(f"unknown Meta-World camera(s) {unknown}; cameras are: {', '.join(CAMERAS)}")
    if cameras and (int(image_size) != image_size or image_size < 8):
        raise ConfigError(f"image_size must be an integer >= 8, got {image_size!r}")
    return cameras


def demo_features(cameras: Sequence[str] = (), image_size: int = 64) -> dict[str, dict[str, Any]]:
    """Feature spec of a generated dataset: :data:`DEMO_FEATURES` plus one video feature
    ``observation.images.<camera>`` of shape ``[image_size, image_size, 3]`` per camera."""
    features = dict(DEMO_FEATURES)
    for camera in _check_cameras(cameras, image_size):
        features[camera_key(camera)] = {
            "dtype": "video",
            "shape": [int(image_size), int(image_size), 3],
            "names": ["height", "width", "channels"],
        }
    return features


def episode_initial_condition(extra: dict) -> np.ndarray:
    """The initial-condition vector recorded in an episode's ``extra`` metadata."""
    value = extra["initial_condition"]
    if isinstance(value, str):
        value = json.loads(value)
    return np.asarray(value, dtype=np.float64)


@dataclass
class EpisodeResult:
    task: str
    seed: int
    attempt: int
    success: bool
    success_step: int  # 1-based step of the first success, -1 if none
    initial_condition: np.ndarray
    frames: dict[str, np.ndarray] | None = field(default=None, repr=False)  # successes only

    @property
    def length(self) -> int:
        return 0 if self.frames is None else int(self.frames[ACTION_KEY].shape[0])


def run_expert_episode(
    task: str,
    env_seed: int,
    max_steps: int = MAX_EPISODE_STEPS,
    extra_steps_after_success: int = 10,
    env: MetaWorldEnv | None = None,
    expert: ScriptedExpert | None = None,
    attempt: int = -1,
    keep_failed_frames: bool = False,
    cameras: Sequence[str] = (),
    image_size: int = 64,
) -> EpisodeResult:
    """Roll out the scripted expert from the initial condition of ``env_seed``.

    Stops ``extra_steps_after_success`` steps after the first success (or at
    ``max_steps``). Frames are returned for successes (and failures if
    ``keep_failed_frames``). With ``cameras``, frames also hold
    ``observation.images.<camera>`` uint8 (T, image_size, image_size, 3): the image of the
    state each action was chosen in (rendering does not change the simulation)."""
    cameras = _check_cameras(cameras, image_size)
    if env is None:
        env = MetaWorldEnv(task, max_steps=max_steps)
    if expert is None:
        expert = ScriptedExpert(task)
    env.max_steps = max_steps
    env.env.max_path_length = max(max_steps, MAX_EPISODE_STEPS)
    env.reset(env_seed)
    assert env.initial_condition is not None
    states, actions, rewards, successes = [], [], [], []
    images: dict[str, list[np.ndarray]] = {c: [] for c in cameras}
    success_step = -1
    for t in range(max_steps):
        obs = env.raw_obs
        for camera in cameras:
            images[camera].append(env.render(camera, int(image_size)))
        action = expert(obs, env.tcp_center)
        states.append(obs.astype(np.float32))
        actions.append(action)
        _, reward, success, _, _ = env.step(action)
        rewards.append(reward)
        successes.append(success)
        if success and success_step < 0:
            success_step = t + 1
        if success_step > 0 and t + 1 >= success_step + extra_steps_after_success:
            break
    ok = success_step > 0
    frames = None
    if ok or keep_failed_frames:
        frames = {
            STATE_KEY: np.stack(states).astype(np.float32),
            ACTION_KEY: np.stack(actions).astype(np.float32),
            "next.reward": np.asarray(rewards, dtype=np.float32)[:, None],
            "next.success": np.asarray(successes, dtype=bool)[:, None],
        }
        for camera in cameras:
            frames[camera_key(camera)] = np.stack(images[camera])
    return EpisodeResult(
        task=task,
        seed=int(env_seed),
        attempt=int(attempt),
        success=ok,
        success_step=success_step,
        initial_condition=env.initial_condition.copy(),
        frames=frames,
    )


# --------------------------------------------------------------------------------------
# Work units (run in worker processes or in-process)
# --------------------------------------------------------------------------------------

_WORKER_CACHE: dict[str, tuple[MetaWorldEnv, ScriptedExpert]] = {}


def _run_unit(unit: tuple[str, list[tuple[int, int]], int, int]) -> list[EpisodeResult]:
    task, attempts, max_steps, extra = unit
    cached = _WORKER_CACHE.get(task)
    if cached is None:
        cached = _WORKER_CACHE[task] = (MetaWorldEnv(task, max_steps=max_steps), ScriptedExpert(task))
    env, expert = cached
    return [
        run_expert_episode(task, env_seed, max_steps, extra, env=env, expert=expert, attempt=attempt)
        for attempt, env_seed in attempts
    ]


def _render_unit(item: tuple[str, int, int, int, int, tuple[str, ...], int]) -> EpisodeResult:
    """Replay one kept episode with camera rendering (second pass)."""
    task, env_seed, attempt, max_steps, extra, cameras, image_size = item
    cached = _WORKER_CACHE.get(task)
    if cached is None:
        cached = _WORKER_CACHE[task] = (MetaWorldEnv(task, max_steps=max_steps), ScriptedExpert(task))
    env, expert = cached
    return run_expert_episode(
        task,
        env_seed,
        max_steps,
        extra,
        env=env,
        expert=expert,
        attempt=attempt,
        cameras=cameras,
        image_size=image_size,
    )


def _units_for_round(
    jobs: dict[str, list[int]], seed: int, max_steps: int, extra: int, parts_per_task: int
) -> list[tuple[str, list[tuple[int, int]], int, int]]:
    units = []
    for task, attempts in jobs.items():
        pairs = [(a, demo_seed(task, a, seed)) for a in attempts]
        size = max(1, math.ceil(len(pairs) / parts_per_task))
        for i in range(0, len(pairs), size):
            units.append((task, pairs[i : i + size], max_steps, extra))
    return units


def _map(pool: LoudPool | None, fn: Callable[[Any], Any], items: list) -> Iterator[Any]:
    """``fn`` over ``items`` in order: here, or in ``pool``'s workers (results stream)."""
    return map(fn, items) if pool is None else pool.map(fn, items)


def generate_demos(
    out_dir: str | Path,
    tasks: str | Sequence[str],
    episodes_per_task: int,
    seed: int = 0,
    workers: int = 1,
    max_steps: int = MAX_EPISODE_STEPS,
    extra_steps_after_success: int = 10,
    overwrite: bool = False,
    progress: bool = True,
    max_attempts_per_task: int | None = None,
    start_method: str = "spawn",
    cameras: Sequence[str] = (),
    image_size: int = 64,
) -> Path:
    """Generate ``episodes_per_task`` successful expert demonstrations per task.

    Args:
        out_dir: dataset root (LeRobotDataset v3.0 layout).
        tasks: ``"mt10"``, ``"mt50"``, ``"reach-v3,push-v3"`` or a list of task names.
        episodes_per_task: successful episodes kept per task.
        seed: run seed; env seeds are ``demo_seed(task, attempt, seed)``.
        workers: worker processes (a :class:`~mode_policy.evaluation.workers.LoudPool`: a worker that dies
            ends the generation with an error); the output does not depend on it.
        max_steps: step limit per episode (Meta-World's is 500).
        extra_steps_after_success: steps recorded after the first success.
        overwrite: replace an existing dataset at ``out_dir``.
        progress: show a tqdm progress bar.
        max_attempts_per_task: give up (:class:`~mode_policy.errors.SimulatorError`) after
            this many attempts for one task; default ``3 * episodes_per_task + 20``.
        start_method: multiprocessing start method for ``workers > 1``. With the default
            ``"spawn"`` a script that calls this at top level needs the usual
            ``if __name__ == "__main__":`` guard (``python -c`` and console scripts are fine).
        cameras: Meta-World cameras to record (names from
            :data:`~mode_policy.envs.metaworld.CAMERAS`, e.g. ``("corner", "gripperPOV")``;
            a comma-separated string works too), stored as video features
            ``observation.images.<camera>``. Empty: state-only dataset.
        image_size: side of the square camera images in pixels.

    Returns:
        The dataset root.
    """
    from tqdm.auto import tqdm

    from ..data.writer import DatasetWriter

    task_list = resolve_tasks(tasks)
    if episodes_per_task < 1:
        raise ConfigError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if max_steps < 1:
        raise ConfigError(f"max_steps must be >= 1, got {max_steps}")
    if extra_steps_after_success < 0:
        raise ConfigError("extra_steps_after_success must be >= 0")
    cameras = _check_cameras(cameras, image_size)
    features = demo_features(cameras, image_size)
    max_attempts = max_attempts_per_task or 3 * episodes_per_task + 20
    if max_attempts < episodes_per_task:
        raise ConfigError("max_attempts_per_task must be >= episodes_per_task")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise DataError(f"{out_dir}: folder exists and is not empty; pass overwrite=True to replace it")

    n = episodes_per_task
    # Split each task into several work units when there are few tasks per worker.
    parts_per_task = max(1, math.ceil(2 * workers / len(task_list))) if workers > 1 else 1
    successes: dict[str, list[EpisodeResult]] = {t: [] for t in task_list}
    n_attempts: dict[str, int] = {t: 0 for t in task_list}
    failures: dict[str, int] = {t: 0 for t in task_list}

    writer: DatasetWriter | None = None  # created at the first finished task
    next_to_write = 0
    pool: LoudPool | None = None

    def write_episode(r: EpisodeResult) -> None:
        nonlocal writer
        assert r.frames is not None
        if writer is None:
            writer = DatasetWriter(out_dir, fps=FPS, features=features, robot_type="sawyer", overwrite=overwrite)
        writer.add_episode(
            r.frames,
            task=INSTRUCTIONS[r.task],
            extra={
                "env_name": r.task,
                "seed": r.seed,
                "attempt": r.attempt,
                # The writer's extras are scalars: the vector is stored as a JSON list
                # (exact float round trip); see episode_initial_condition().
                "initial_condition": json.dumps([float(x) for x in r.initial_condition]),
                "success_step": r.success_step,
            },
        )

    def with_images(chosen: list[EpisodeResult]) -> Iterator[EpisodeResult]:
        """Replay the kept episodes with rendering, a few at a time, in order."""
        items = [
            (r.task, r.seed, r.attempt, max_steps, extra_steps_after_success, tuple(cameras), int(image_size))
            for r in chosen
        ]
        for r, rendered in zip(chosen, _map(pool, _render_unit, items)):
            assert r.frames is not None and rendered.frames is not None
            same = rendered.success_step == r.success_step and all(
                np.array_equal(rendered.frames[k], r.frames[k]) for k in DEMO_FEATURES
            )
            if not same:
                raise SimulatorError(
                    f"{r.task} (env seed {r.seed}): replaying the expert episode to render camera images "
                    "gave a different trajectory than the first rollout; Meta-World is not deterministic here"
                )
            yield rendered

    def write_ready() -> None:
        # Write finished tasks in task order (streaming; memory stays bounded).
        nonlocal next_to_write
        chosen: list[EpisodeResult] = []
        while next_to_write < len(task_list) and len(successes[task_list[next_to_write]]) >= n:
            task = task_list[next_to_write]
            chosen += sorted(successes[task], key=lambda r: r.attempt)[:n]
            successes[task] = []
            next_to_write += 1
        for r in with_images(chosen) if cameras else chosen:
            write_episode(r)
            if cameras:
                img_bar.update(1)

    bar = tqdm(total=len(task_list) * n, desc="expert demos", unit="ep", disable=not progress)
    img_bar = tqdm(
        total=len(task_list) * n,
        desc=f"rendering {'+'.join(cameras)}",
        unit="ep",
        disable=not (progress and cameras),
        position=1,
    )
    try:
        if workers > 1:
            pool = LoudPool(
                workers,
                "demonstration worker",
                "Generation starts over when run again (with fewer workers if one was killed for memory).",
                start_method,
            )
        pending = set(task_list)
        while pending:
            jobs: dict[str, list[int]] = {}
            for task in task_list:
                if task not in pending:
                    continue
                missing = n - len(successes[task])
                if n_attempts[task] >= max_attempts:
                    raise SimulatorError(
                        f"the scripted expert for {task} succeeded only {len(successes[task])} "
                        f"times in {n_attempts[task]} attempts (needed {n}); raise "
                        f"max_attempts_per_task or lower episodes_per_task"
                    )
                # First round: exactly n attempts; retries: the missing ones plus a margin.
                count = missing if n_attempts[task] == 0 else missing + max(2, missing // 2)
                count = min(count, max_attempts - n_attempts[task])
                jobs[task] = list(range(n_attempts[task], n_attempts[task] + count))
                n_attempts[task] += count
            units = _units_for_round(jobs, seed, max_steps, extra_steps_after_success, parts_per_task)
            for results in _map(pool, _run_unit, units):
                for r in results:
                    if r.success:
                        if len(successes[r.task]) < n:
                            bar.update(1)
                        successes[r.task].append(r)
                    else:
                        failures[r.task] += 1
                bar.set_postfix(failed=sum(failures.values()))
            for task in jobs:
                if len(successes[task]) >= n:
                    pending.discard(task)
            write_ready()
        write_ready()
    except BaseException:
        if writer is not None:
            writer.close()  # leaves an unfinished folder (no meta/info.json)
        raise
    finally:
        bar.close()
        img_bar.close()
        if pool is not None:
            pool.close(terminate=True)
        for env, _ in _WORKER_CACHE.values():
            env.close_renderers()
        _WORKER_CACHE.clear()
    assert writer is not None
    root = writer.finalize()
    logger.info(
        "wrote %d expert episodes (%d tasks x %d) to %s; expert success rate per task: %s",
        len(task_list) * n,
        len(task_list),
        n,
        root,
        ", ".join(f"{t}={1 - failures[t] / max(1, n_attempts[t]):.2f}" for t in task_list),
    )
    return Path(root) if root is not None else out_dir
