"""LIBERO evaluation (the protocol of the LIBERO / MoDE papers).

Protocol, per task of a suite:

* rollout ``r`` starts from LIBERO's fixed initial state ``r`` of that task
  (``task_suite.get_task_init_states(task_id)[r]``, 50 per task), after ``env.reset()``;
* ``num_settle_steps`` no-op steps (arm still, gripper open: ``[0, 0, 0, 0, 0, 0, -1]``)
  let the objects settle, as in OpenVLA's and LeRobot's LIBERO evaluations;
* then at most ``max_steps`` policy steps (per-suite defaults in
  :data:`~mode_policy.envs.libero.SUITE_MAX_STEPS`); the rollout succeeds as soon as the
  env reports ``done``, which LIBERO sets to the task's goal predicate (``env.check_success()``).

Several envs of one task run in lockstep in this process (a "wave": rollouts 0..n-1, n..2n-1,
... of a task), and the policy is called once per step for all of them. Observations are
described in :mod:`mode_policy.envs.libero`; only the cameras the policy uses are rendered.

With a :class:`~mode_policy.evaluation.unit_log.UnitLog` the evaluation is resumable and
shardable: every rollout is logged as it ends, and waves are the units processes share
(:mod:`mode_policy.evaluation.parallel`); the merged result equals the one-process result.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from ..data.images import libero_image_transform
from ..data.video import write_mp4
from ..envs.libero import (
    ACTION_DIM,
    CAMERAS,
    DEFAULT_MAX_STEPS,
    FPS,
    SUITE_MAX_STEPS,
    image_convention,
    import_libero,
    libero_observation,
    load_init_states,
    load_suite,
    make_libero_env,
    start_rollout,
)
from ..errors import ConfigError
from .protocol import Policy, eval_mode, policy_device
from .result import EvalResult, TaskResult
from .unit_log import UnitLog

VIDEO_CAMERA = "agentview"


def _load_suite(lib: SimpleNamespace, suite: str) -> Any:
    """The LIBERO benchmark object of ``suite`` (:func:`~mode_policy.envs.libero.load_suite`)."""
    return load_suite(lib, suite)


def libero_suite_size(suite: str) -> int:
    """Number of tasks of a LIBERO suite."""
    return int(_load_suite(import_libero(), suite.strip().lower()).n_tasks)


UNIT_STRIDE = 1000
"""A :class:`~mode_policy.evaluation.unit_log.UnitLog` names rollout ``r`` of task ``t`` ``t * UNIT_STRIDE + r``."""


def libero_num_envs(n_rollouts_per_task: int, num_envs: int | None, cameras: bool) -> int:
    """Envs run in lockstep per task (a wave): ``num_envs``, else up to 10 without cameras and
    4 with (an env that renders holds about 1 GB of memory, one that does not ~0.3 GB)."""
    return max(1, min(n_rollouts_per_task, num_envs or (4 if cameras else 10)))


def libero_waves(task_ids: Sequence[int], n_rollouts_per_task: int, n_envs: int) -> list[list[int]]:
    """The rollouts of each task in waves of ``n_envs`` (rollouts 0..n-1, n..2n-1, ...), as unit
    ids. A wave is played whole: its rollouts share the policy's sampling noise, so a
    rollout's outcome depends on its wave, and sharding deals whole waves."""
    return [
        [t * UNIT_STRIDE + r for r in range(w, min(w + n_envs, n_rollouts_per_task))]
        for t in task_ids
        for w in range(0, n_rollouts_per_task, n_envs)
    ]


def evaluate_libero(
    policy: Policy,
    suite: str,
    n_rollouts_per_task: int = 20,
    max_steps: int | None = None,
    num_settle_steps: int = 10,
    video_dir: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    tasks: Sequence[int] | None = None,
    *,
    num_envs: int | None = None,
    image_keys: Sequence[str] | None = None,
    image_size: int | None = None,
    render_size: int = 128,
    fast_render: bool = True,
    units: Sequence[int] | None = None,
    log: UnitLog | None = None,
    log_writer: str = "main",
) -> EvalResult:
    """Evaluate ``policy`` on a LIBERO suite: success per task (keyed by LIBERO's task name)
    and overall.

    Args:
        policy: steps with ``select_action`` (B, 7); it receives the batch described in
            :mod:`mode_policy.envs.libero`, with ``task`` strings (attach a goal encoder).
        suite: ``libero_spatial``, ``libero_object``, ``libero_goal``, ``libero_10``,
            ``libero_90`` (or another suite the installed package registers).
        n_rollouts_per_task: rollouts per task; rollout r uses initial state r (<= 50).
        max_steps: policy steps per rollout (default: ``SUITE_MAX_STEPS`` of the suite).
        num_settle_steps: no-op steps before the policy acts.
        video_dir: write one mp4 (agentview camera) per rollout into this folder.
        seed: seeds ``env.seed`` and the policy's sampling noise (per task and wave).
        progress: show a progress bar.
        tasks: task indices of the suite to evaluate (default: all), in LIBERO's default
            task order (the order of the published results).
        num_envs: envs run in lockstep per task (default: :func:`libero_num_envs`).
        image_keys: cameras fed to the policy (default: ``policy.config.image_keys``); keys of
            ``CAMERAS``.
        image_size: side of the images fed to the policy (default: ``policy.config.image_size``
            when > 0, else ``render_size``).
        render_size: side of the rendered camera images (LIBERO's datasets use 128).
        fast_render: render with :func:`~mode_policy.envs.libero.libero_render_settings` (as
            ``mode-policy demos --env libero`` does); False: LIBERO's own settings (as its
            published HDF5 datasets were rendered).
        units: play only the waves (:func:`libero_waves`) holding these rollouts (unit ids
            ``task * UNIT_STRIDE + rollout``); the result then covers only them.
        log: a :class:`~mode_policy.evaluation.unit_log.UnitLog` that makes the run resumable
            and shardable: each rollout is appended (as ``log_writer``) the step it ends, waves
            whose rollouts the log holds are not played again (a wave the log holds in part is
            played again whole: it replays identically), and the result is read from the log,
            so it is the same however the waves were split over processes or interrupted.

    Per task, ``wall_s`` is the time its waves took (environment creation counts only in the
    overall ``wall_s``); ``extra`` holds ``task_id``, ``episode_lengths`` (policy steps per
    rollout) and ``mean_steps``; ``metrics["env_steps"]`` counts every env step, settling included.
    """
    from tqdm.auto import tqdm

    start_time = time.perf_counter()
    suite = suite.strip().lower()
    if n_rollouts_per_task < 1:
        raise ConfigError(f"n_rollouts_per_task must be >= 1, got {n_rollouts_per_task}")
    if num_settle_steps < 0:
        raise ConfigError(f"num_settle_steps must be >= 0, got {num_settle_steps}")
    keys = list(policy.config.image_keys if image_keys is None else image_keys)
    unknown = [k for k in keys if k not in CAMERAS]
    if unknown:
        raise ConfigError(f"unknown LIBERO camera key(s) {unknown}; available: {list(CAMERAS)}")
    if image_size is None:
        image_size = policy.config.image_size if policy.config.image_size > 0 else None
    steps = int(max_steps if max_steps is not None else SUITE_MAX_STEPS.get(suite, DEFAULT_MAX_STEPS))
    if steps < 1:
        raise ConfigError(f"max_steps must be >= 1, got {steps}")
    if n_rollouts_per_task > UNIT_STRIDE:
        raise ConfigError(f"n_rollouts_per_task must be <= {UNIT_STRIDE}, got {n_rollouts_per_task}")
    video_path = Path(video_dir) if video_dir is not None else None

    lib = import_libero()
    task_suite = _load_suite(lib, suite)
    task_ids = list(range(task_suite.n_tasks)) if tasks is None else [int(t) for t in tasks]
    bad = [t for t in task_ids if not 0 <= t < task_suite.n_tasks]
    if bad:
        raise ConfigError(f"task index(es) {bad} out of range: {suite} has {task_suite.n_tasks} tasks")
    if not task_ids:
        raise ConfigError("no tasks to evaluate")

    cameras = [CAMERAS[k] for k in keys]
    if video_path is not None and VIDEO_CAMERA not in cameras:
        cameras.append(VIDEO_CAMERA)
    convention = image_convention()
    device = policy_device(policy)
    n_envs = libero_num_envs(n_rollouts_per_task, num_envs, bool(cameras))
    waves = libero_waves(task_ids, n_rollouts_per_task, n_envs)
    if units is not None:
        wanted = {int(u) for u in units}
        known = {u for wave in waves for u in wave}
        if not wanted or not wanted <= known:
            raise ConfigError(f"units must be a non-empty list of rollouts of these tasks, got {sorted(wanted)[:10]}")
        waves = [wave for wave in waves if wanted.intersection(wave)]
    covered = [u for wave in waves for u in wave]
    records: dict[int, dict[str, Any]] = log.records() if log is not None else {}
    todo = [wave for wave in waves if any(u not in records for u in wave)]

    def episode_done(record: dict[str, Any]) -> None:
        if record["unit"] not in records:
            records[record["unit"]] = record
            if log is not None:
                log.append(log_writer, record)

    bar = tqdm(total=sum(map(len, todo)), desc=f"LIBERO {suite}", unit="rollout", disable=not progress)
    try:
        with eval_mode(policy):
            for task_id in dict.fromkeys(wave[0] // UNIT_STRIDE for wave in todo):
                task = task_suite.get_task(task_id)
                task_waves = [wave for wave in todo if wave[0] // UNIT_STRIDE == task_id]
                init_states = load_init_states(lib, task_suite, task_id)
                if n_rollouts_per_task > len(init_states):
                    raise ConfigError(
                        f"{suite} task {task_id} has {len(init_states)} initial states; "
                        f"n_rollouts_per_task={n_rollouts_per_task} is more"
                    )
                bddl = Path(lib.get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
                envs: list[Any] = []
                try:
                    for _ in range(max(map(len, task_waves))):
                        envs.append(
                            make_libero_env(
                                lib, bddl, cameras, render_size, steps + num_settle_steps + 10, fast_render=fast_render
                            )
                        )
                    for wave in task_waves:
                        rollouts = [u % UNIT_STRIDE for u in wave]
                        _run_wave(
                            policy,
                            envs[: len(rollouts)],
                            init_states,
                            rollouts,
                            task,
                            suite,
                            task_id,
                            steps,
                            num_settle_steps,
                            keys,
                            image_size,
                            convention,
                            device,
                            video_path,
                            seed,
                            episode_done,
                        )
                        bar.update(len(rollouts))
                        bar.set_postfix(
                            success=f"{sum(records[u]['success'] for u in covered if u in records)}/"
                            f"{sum(u in records for u in covered)}"
                        )
                finally:
                    for env in envs:
                        with contextlib.suppress(Exception):
                            env.close()
    finally:
        bar.close()

    per_task: dict[str, TaskResult] = {}
    for task_id in dict.fromkeys(u // UNIT_STRIDE for u in covered):
        task = task_suite.get_task(task_id)
        mine = [records[u] for u in covered if u // UNIT_STRIDE == task_id]
        lengths = [int(r["length"]) for r in mine]
        wave_wall: dict[int, float] = {}
        for r in mine:  # a wave took as long as its last rollout
            wave_wall[r["wave"]] = max(wave_wall.get(r["wave"], 0.0), float(r["wall_s"]))
        extra = {"task_id": task_id, "episode_lengths": lengths, "mean_steps": float(np.mean(lengths))}
        per_task[task.name] = TaskResult(
            sum(bool(r["success"]) for r in mine), len(mine), sum(wave_wall.values()), task.language, extra
        )
    settings = {
        "suite": suite,
        "tasks": task_ids,
        "n_rollouts_per_task": n_rollouts_per_task,
        "max_steps": steps,
        "num_settle_steps": num_settle_steps,
        "image_keys": keys,
        "image_size": image_size,
        "render_size": render_size,
        "fast_render": bool(fast_render),
        "num_envs": n_envs,
        "rollouts_played_now": sum(map(len, todo)),
    }
    env_steps = sum(int(records[u]["env_steps"]) for u in covered)
    return EvalResult(
        "libero", per_task, time.perf_counter() - start_time, seed, settings=settings, metrics={"env_steps": env_steps}
    )


def _run_wave(
    policy: Policy,
    envs: Sequence[Any],
    init_states: np.ndarray,
    rollouts: Sequence[int],
    task: Any,
    suite: str,
    task_id: int,
    max_steps: int,
    num_settle_steps: int,
    image_keys: Sequence[str],
    image_size: int | None,
    convention: str,
    device: torch.device,
    video_dir: Path | None,
    seed: int,
    on_episode: Callable[[dict[str, Any]], None],
) -> None:
    """Roll out len(envs) envs of one task in lockstep from initial states ``rollouts``;
    ``on_episode(record)`` gets each rollout's record (unit id, success, policy steps, env
    steps, seconds since the wave started) the step it ends."""
    wave_start = time.perf_counter()
    n = len(envs)
    raw: list[Any] = []
    for env, r in zip(envs, rollouts):
        raw.append(start_rollout(env, init_states[r], seed + r, num_settle_steps))
    video_key = f"{VIDEO_CAMERA}_image"
    frames = [[libero_image_transform(obs[video_key], convention)] for obs in raw] if video_dir is not None else []

    def finish(i: int, success: bool, length: int) -> None:
        on_episode(
            {
                "unit": task_id * UNIT_STRIDE + rollouts[i],
                "wave": task_id * UNIT_STRIDE + rollouts[0],
                "success": success,
                "length": length,
                "env_steps": num_settle_steps + length,
                "wall_s": time.perf_counter() - wave_start,
            }
        )

    active = np.ones(n, dtype=bool)
    success = np.zeros(n, dtype=bool)
    # fixed sampling noise per (seed, task, wave), independent of which other tasks run
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1_000_003 + task_id * 1009 + rollouts[0])
        policy.reset()
        for t in range(max_steps):
            batch = libero_observation(raw, task.language, image_keys, image_size, convention, device)
            actions = policy.select_action(batch)
            actions = np.asarray(actions.detach().cpu().numpy() if torch.is_tensor(actions) else actions, np.float64)
            if actions.shape != (n, ACTION_DIM):
                raise ConfigError(
                    f"the policy returned actions of shape {actions.shape}, LIBERO needs ({n}, {ACTION_DIM})"
                )
            actions = np.clip(actions, -1.0, 1.0)
            for i, env in enumerate(envs):
                if not active[i]:
                    continue
                raw[i], _, done, _ = env.step(actions[i])
                if frames:
                    frames[i].append(libero_image_transform(raw[i][video_key], convention))
                if done:
                    active[i], success[i] = False, True
                    finish(i, True, t + 1)
            if not active.any():
                break
    for i in np.flatnonzero(active):
        finish(int(i), False, max_steps)
    for clip, r, ok in zip(frames, rollouts, success):
        name = f"{suite}_task{task_id:02d}_rollout{r:02d}_{'success' if ok else 'failure'}.mp4"
        write_mp4(video_dir / name, clip, FPS)  # type: ignore[operator]
