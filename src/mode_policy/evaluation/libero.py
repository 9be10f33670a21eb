"""LIBERO evaluation (the protocol of the LIBERO / MoDE papers).

Protocol, per task of a suite:

* rollout ``r`` starts from LIBERO's fixed initial state ``r`` of that task
  (``task_suite.get_task_init_states(task_id)[r]``, 50 per task), after ``env.reset()``;
* ``num_settle_steps`` no-op steps (arm still, gripper open: ``[0, 0, 0, 0, 0, 0, -1]``)
  let the objects settle, as in OpenVLA's and LeRobot's LIBERO evaluations;
* then at most ``max_steps`` policy steps (per-suite defaults in
  :data:`~mode_policy.envs.libero.SUITE_MAX_STEPS`); the rollout succeeds as soon as the
  env reports ``done``, which LIBERO sets to the task's goal predicate (``env.check_success()``).

Several envs of one task run in lockstep in this process (a "wave"), and the policy is
called once per step for all of them. Observations are described in
:mod:`mode_policy.envs.libero`; only the cameras the policy uses are rendered.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from ..data.video import write_mp4
from ..envs.libero import (
    ACTION_DIM, CAMERAS, DEFAULT_MAX_STEPS, DUMMY_ACTION, FPS, SUITE_MAX_STEPS, check_assets, image_convention,
    import_libero, libero_observation, load_init_states, make_libero_env,
)
from ..errors import ConfigError
from ..images import libero_image_transform
from .protocol import Policy, eval_mode, policy_device
from .result import EvalResult, TaskResult

VIDEO_CAMERA = "agentview"


def _load_suite(lib: SimpleNamespace, suite: str) -> Any:
    """The LIBERO benchmark object of ``suite`` in its default task order (``task_order_index=0``)."""
    registry = lib.benchmark.get_benchmark_dict()
    if suite not in registry:
        standard = [s for s in SUITE_MAX_STEPS if s in registry]
        raise ConfigError(f"unknown LIBERO suite {suite!r}; standard suites: {standard}")
    check_assets(lib, suite)
    with contextlib.redirect_stdout(io.StringIO()):  # the benchmark prints its task order
        return registry[suite]()


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
        num_envs: envs run in lockstep per task (default: up to 10 without cameras, 4 with
            cameras: an env that renders holds about 1 GB of memory, one that does not ~0.3 GB).
        image_keys: cameras fed to the policy (default: ``policy.config.image_keys``); keys of
            ``CAMERAS``.
        image_size: side of the images fed to the policy (default: ``policy.config.image_size``
            when > 0, else ``render_size``).
        render_size: side of the rendered camera images (LIBERO's datasets use 128).

    Tasks run one after the other, so each task's ``wall_s`` is its own time. Per task,
    ``extra`` holds ``task_id``, ``episode_lengths`` (policy steps per rollout) and
    ``mean_steps``; ``metrics["env_steps"]`` counts every env step, settling included.
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
    n_envs = max(1, min(n_rollouts_per_task, num_envs or (4 if cameras else 10)))

    per_task: dict[str, TaskResult] = {}
    env_steps = 0
    bar = tqdm(total=len(task_ids) * n_rollouts_per_task, desc=f"LIBERO {suite}", unit="rollout", disable=not progress)
    try:
        with eval_mode(policy):
            for task_id in task_ids:
                task_start = time.perf_counter()
                task = task_suite.get_task(task_id)
                init_states = load_init_states(lib, task_suite, task_id)
                if n_rollouts_per_task > len(init_states):
                    raise ConfigError(
                        f"{suite} task {task_id} has {len(init_states)} initial states; "
                        f"n_rollouts_per_task={n_rollouts_per_task} is more"
                    )
                bddl = Path(lib.get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
                envs: list[Any] = []
                successes: list[bool] = []
                lengths: list[int] = []
                try:
                    for _ in range(n_envs):
                        envs.append(make_libero_env(lib, bddl, cameras, render_size, steps + num_settle_steps + 10))
                    for wave_start in range(0, n_rollouts_per_task, n_envs):
                        rollouts = list(range(wave_start, min(wave_start + n_envs, n_rollouts_per_task)))
                        ok, length, n_steps = _run_wave(
                            policy, envs[: len(rollouts)], init_states, rollouts, task, suite, task_id, steps,
                            num_settle_steps, keys, image_size, convention, device, video_path, seed,
                        )
                        successes += ok
                        lengths += length
                        env_steps += n_steps
                        bar.update(len(rollouts))
                        done_so_far = sum(r.successes for r in per_task.values()) + sum(successes)
                        bar.set_postfix(success=f"{done_so_far}/{bar.n}")
                finally:
                    for env in envs:
                        with contextlib.suppress(Exception):
                            env.close()
                extra = {"task_id": task_id, "episode_lengths": lengths, "mean_steps": float(np.mean(lengths))}
                per_task[task.name] = TaskResult(
                    int(sum(successes)), n_rollouts_per_task, time.perf_counter() - task_start, task.language, extra
                )
    finally:
        bar.close()

    settings = {
        "suite": suite, "tasks": task_ids, "n_rollouts_per_task": n_rollouts_per_task, "max_steps": steps,
        "num_settle_steps": num_settle_steps, "image_keys": keys, "image_size": image_size,
        "render_size": render_size,
    }
    return EvalResult("libero", per_task, time.perf_counter() - start_time, seed, settings=settings,
                      metrics={"env_steps": env_steps})


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
) -> tuple[list[bool], list[int], int]:
    """Roll out len(envs) envs of one task in lockstep from initial states ``rollouts``.
    Returns (success per rollout, policy steps per rollout, env steps taken)."""
    n = len(envs)
    raw: list[Any] = []
    for env, r in zip(envs, rollouts):
        env.seed(seed + r)
        env.reset()
        obs = env.set_init_state(init_states[r])
        for _ in range(num_settle_steps):
            obs, _, _, _ = env.step(DUMMY_ACTION.copy())
        raw.append(obs)
    video_key = f"{VIDEO_CAMERA}_image"
    frames = [[libero_image_transform(obs[video_key], convention)] for obs in raw] if video_dir is not None else []

    success = np.zeros(n, dtype=bool)
    active = np.ones(n, dtype=bool)
    lengths = np.full(n, max_steps, dtype=np.int64)
    env_steps = n * num_settle_steps
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
                env_steps += 1
                if frames:
                    frames[i].append(libero_image_transform(raw[i][video_key], convention))
                if done:
                    success[i], active[i], lengths[i] = True, False, t + 1
            if not active.any():
                break
    for clip, r, ok in zip(frames, rollouts, success):
        name = f"{suite}_task{task_id:02d}_rollout{r:02d}_{'success' if ok else 'failure'}.mp4"
        write_mp4(video_dir / name, clip, FPS)  # type: ignore[operator]
    return success.tolist(), lengths.tolist(), env_steps
