"""Policy evaluation in Meta-World: batched rollouts on held-out initial conditions.

Episodes use seeds from the evaluation range of :mod:`mode_policy.envs.metaworld`,
disjoint from the demonstration range, so the policy is scored on initial conditions it
never saw. All active environments re-plan together: one batched ``predict_action_chunk``
call per chunk for every env still running.

Image policies (``config.image_keys`` = ``observation.images.<camera>`` with Meta-World
camera names) get each camera rendered at ``config.image_size`` on the CPU, as in
:func:`mode_policy.envs.metaworld_demos.generate_demos`: only for the active envs and only at the steps
that enter an observation history (the re-planning step and the ``n_obs_steps - 1``
before it). State-only policies render nothing.

The Meta-World wrapper (and with it mujoco) is imported only after
:func:`~mode_policy.envs.rendering.setup_headless_rendering`, so that rendering works
without a display.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from ..constants import IMAGES_PREFIX, STATE_KEY, TASK_KEY
from ..data.video import write_mp4
from ..envs.rendering import setup_headless_rendering
from ..errors import ConfigError
from .protocol import Policy, eval_mode, policy_device
from .result import EvalResult, TaskResult

VIDEO_FPS = 30
VIDEO_CAMERA = "corner2"


def _metaworld() -> ModuleType:
    """:mod:`mode_policy.envs.metaworld`, imported after the headless rendering set-up."""
    setup_headless_rendering()
    from ..envs import metaworld

    return metaworld


def policy_cameras(policy: Policy) -> dict[str, str]:
    """``{image key: Meta-World camera name}`` of the policy's cameras (empty for state-only
    policies); ConfigError when a key is not ``observation.images.<Meta-World camera>`` or the
    image size is unknown."""
    cameras_available = _metaworld().CAMERAS
    cfg = policy.config
    cameras = {}
    for key in cfg.image_keys:
        name = key[len(IMAGES_PREFIX) :] if key.startswith(IMAGES_PREFIX) else ""
        if name not in cameras_available:
            raise ConfigError(
                f"policy camera {key!r} is not a Meta-World camera; expected {IMAGES_PREFIX}<name> with a name "
                f"from {', '.join(cameras_available)}"
            )
        cameras[key] = name
    if cameras and cfg.image_size <= 0:
        raise ConfigError("the policy's image_size is not set: cannot tell at which size to render its cameras")
    return cameras


@torch.no_grad()
def rollout_batch(
    policy: Policy,
    tasks: Sequence[str],
    seeds: Sequence[int],
    max_steps: int | None = None,
    record: int = 0,
    render_size: int = 128,
) -> dict[str, Any]:
    """Run one episode per (task, seed) in parallel (at most ``max_steps`` steps, default
    Meta-World's 500). Returns ``success`` (N,) bool, ``steps`` (N,) and ``frames``: for the
    first ``record`` envs, the list of rendered (render_size, render_size, 3) frames.

    The policy gets ``observation.state`` (n, n_obs, 39) (unless ``state_dim`` is 0) and,
    for each camera of an image policy, ``observation.images.<camera>`` (n, n_obs, S, S, 3)
    uint8 rendered at ``config.image_size``, with the same history (clamped at the
    episode start) as the state; n is the number of envs still running."""
    mw = _metaworld()
    max_steps = mw.MAX_EPISODE_STEPS if max_steps is None else max_steps
    device = policy_device(policy)
    cfg = policy.config
    cameras = policy_cameras(policy)
    n_obs, n_act = cfg.n_obs_steps, cfg.n_action_steps
    envs = mw.MetaWorldBatch(list(tasks), list(seeds), max_steps=max_steps)
    obs = envs.reset()
    history: deque[np.ndarray] = deque([obs] * n_obs, maxlen=n_obs)
    # camera images per step t (only steps that enter a history): {t: {key: (N, S, S, 3)}}
    image_history: dict[int, dict[str, np.ndarray]] = {}
    size = cfg.image_size
    instructions = envs.instructions
    chunk = np.zeros((len(envs), cfg.horizon, cfg.action_dim), dtype=np.float32)
    frames: list[list[np.ndarray]] = [[] for _ in range(record)]
    t = 0
    while not envs.all_done and t < max_steps:
        if cameras:
            next_plan = -(-t // n_act) * n_act  # first re-planning step >= t
            if next_plan - t < n_obs and next_plan < max_steps:
                active = np.flatnonzero(~envs.done)
                shots = {}
                for key, camera in cameras.items():
                    shots[key] = np.zeros((len(envs), size, size, 3), dtype=np.uint8)
                    for i in active:
                        shots[key][i] = envs.envs[i].render(camera, size)
                image_history[t] = shots
            for stale in [step for step in image_history if step <= t - n_obs]:
                del image_history[stale]
        if t % n_act == 0:
            active = np.flatnonzero(~envs.done)
            batch: dict[str, Any] = {TASK_KEY: [instructions[i] for i in active]}
            if cfg.state_dim > 0:
                batch[STATE_KEY] = torch.as_tensor(np.stack(history, axis=1)[active], device=device)  # (n, n_obs, S)
            seen = [max(0, t - n_obs + 1 + j) for j in range(n_obs)]  # clamped at the episode start
            for key in cameras:
                stacked = np.stack([image_history[step][key][active] for step in seen], axis=1)  # (n, n_obs, S, S, 3)
                batch[key] = torch.as_tensor(stacked, device=device)
            chunk[active] = policy.predict_action_chunk(batch).float().cpu().numpy()  # (n, horizon, A)
        if record:
            images = [envs.envs[i].render(VIDEO_CAMERA, render_size) for i in range(record)]
            for i, image in enumerate(images):
                if not envs.done[i]:
                    frames[i].append(image)
        obs, _, _ = envs.step(chunk[:, t % n_act])
        history.append(obs)
        t += 1
    result = {"success": envs.success.copy(), "steps": envs.steps.copy(), "frames": frames}
    envs.close()
    return result


def _check_policy_dims(policy: Policy, obs_dim: int, action_dim: int) -> None:
    cfg = policy.config
    if cfg.state_dim not in (obs_dim, 0) or cfg.action_dim != action_dim:
        raise ConfigError(
            f"Meta-World has {obs_dim}-d states and {action_dim}-d actions; this policy was trained on "
            f"state_dim={cfg.state_dim}, action_dim={cfg.action_dim}"
        )


def evaluate_metaworld(
    policy: Policy,
    tasks: str | Sequence[str],
    episodes_per_task: int = 50,
    seed: int = 0,
    batch_size: int = 100,
    max_steps: int | None = None,
    video_dir: str | Path | None = None,
    videos_per_task: int = 0,
    progress: bool = True,
) -> EvalResult:
    """Success per task and overall on held-out seeds (``tasks``: ``"mt10"``, a comma-separated
    list or a list of names; see :func:`~mode_policy.envs.metaworld.resolve_tasks`).

    Episodes of all tasks are run ``batch_size`` at a time, so tasks share batches: each
    task's ``wall_s`` is its share of every batch's wall time, in proportion to the number of
    its episodes in that batch. ``extra["mean_steps"]`` is the mean episode length. The first
    ``videos_per_task`` episodes of each task are recorded to ``video_dir/<task>_ep<i>.mp4``.
    Each batch seeds torch's generator from ``seed`` and its position, so the same policy,
    seed and batch size give the same result when run again."""
    start = time.perf_counter()
    if episodes_per_task < 1:
        raise ConfigError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
    mw = _metaworld()
    task_list = mw.resolve_tasks(tasks)
    max_steps = mw.MAX_EPISODE_STEPS if max_steps is None else max_steps
    _check_policy_dims(policy, mw.OBS_DIM, mw.ACTION_DIM)
    policy_cameras(policy)  # fail before any rollout when the cameras cannot be rendered
    jobs = [(t, mw.eval_seed(t, i, seed), i) for t in task_list for i in range(episodes_per_task)]
    successes = {t: 0 for t in task_list}
    lengths: dict[str, list[int]] = {t: [] for t in task_list}
    wall = {t: 0.0 for t in task_list}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="evaluating", unit="episode", dynamic_ncols=True)
    with eval_mode(policy):
        policy.reset()
        for lo in range(0, len(jobs), batch_size):
            batch_start = time.perf_counter()
            part = jobs[lo : lo + batch_size]
            want_video = [j for j, (_, _, i) in enumerate(part) if video_dir is not None and i < videos_per_task]
            order = want_video + [j for j in range(len(part)) if j not in want_video]  # recorded envs first
            part = [part[j] for j in order]
            torch.manual_seed(seed * 1_000_003 + lo)  # the policy's noise: the same result when run again
            out = rollout_batch(policy, [p[0] for p in part], [p[1] for p in part], max_steps, record=len(want_video))
            for (task, _, _), ok, n in zip(part, out["success"], out["steps"]):
                successes[task] += int(ok)
                lengths[task].append(int(n))
            for (task, _, i), frames in zip(part, out["frames"]):
                if frames:
                    write_mp4(Path(video_dir) / f"{task}_ep{i:03d}.mp4", frames, VIDEO_FPS)
            batch_wall = time.perf_counter() - batch_start
            for task, _, _ in part:
                wall[task] += batch_wall / len(part)
            if bar is not None:
                bar.update(len(part))
                done = sum(len(v) for v in lengths.values())
                bar.set_postfix(success=f"{sum(successes.values()) / max(done, 1):.2f}")
    if bar is not None:
        bar.close()
    per_task = {
        t: TaskResult(
            successes[t], episodes_per_task, wall[t], mw.INSTRUCTIONS[t], {"mean_steps": float(np.mean(lengths[t]))}
        )
        for t in task_list
    }
    settings = {
        "episodes_per_task": episodes_per_task,
        "batch_size": batch_size,
        "max_steps": max_steps,
        "n_action_steps": policy.config.n_action_steps,
    }
    return EvalResult("metaworld", per_task, time.perf_counter() - start, seed, settings=settings)
