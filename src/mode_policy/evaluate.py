"""Policy evaluation in Meta-World: batched rollouts on held-out initial conditions.

Episodes use seeds from the evaluation range of
:mod:`mode_policy.envs.metaworld_env`, disjoint from the demonstration range,
so the policy is scored on initial conditions it never saw. All active
environments re-plan together: one batched ``predict_action_chunk`` call per
chunk for every env still running.

Image policies (``config.image_keys`` = ``observation.images.<camera>`` with Meta-World
camera names) get each camera rendered at ``config.image_size`` on the CPU, as in
:func:`mode_policy.demos.generate_demos`: only for the active envs and only at the steps
that enter an observation history (the re-planning step and the ``n_obs_steps - 1``
before it). State-only policies render nothing.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .confidence import wilson_interval
from .envs.metaworld_env import (
    ACTION_DIM, CAMERAS, INSTRUCTIONS, MAX_EPISODE_STEPS, OBS_DIM, MetaWorldBatch, eval_seed, resolve_tasks,
)
from .fileio import atomic_write, atomic_write_json
from .policy import STATE_KEY, MoDEPolicy


def _write_video(path: Path, frames: list[np.ndarray], fps: int = 30) -> None:
    import av

    def write(tmp: str) -> None:
        with av.open(tmp, mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.height, stream.width = frames[0].shape[:2]
            stream.pix_fmt = "yuv420p"
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())

    atomic_write(path, write)


CAMERA_PREFIX = "observation.images."


def policy_cameras(policy: MoDEPolicy) -> dict[str, str]:
    """``{image key: Meta-World camera name}`` of the policy's cameras (empty for state-only
    policies); ValueError when a key is not ``observation.images.<Meta-World camera>`` or the
    image size is unknown."""
    cfg = policy.config
    cameras = {}
    for key in cfg.image_keys:
        name = key[len(CAMERA_PREFIX):] if key.startswith(CAMERA_PREFIX) else ""
        if name not in CAMERAS:
            raise ValueError(
                f"policy camera {key!r} is not a Meta-World camera; expected {CAMERA_PREFIX}<name> with a name "
                f"from {', '.join(CAMERAS)}"
            )
        cameras[key] = name
    if cameras and cfg.image_size <= 0:
        raise ValueError("the policy's image_size is not set: cannot tell at which size to render its cameras")
    return cameras


@torch.no_grad()
def rollout_batch(
    policy: MoDEPolicy,
    tasks: Sequence[str],
    seeds: Sequence[int],
    max_steps: int = MAX_EPISODE_STEPS,
    record: int = 0,
    render_size: int = 128,
) -> dict[str, Any]:
    """Run one episode per (task, seed) in parallel. Returns success flags,
    steps, and (for the first ``record`` envs) lists of rendered frames.

    The policy gets ``observation.state`` (n, n_obs, 39) (unless ``state_dim`` is 0) and,
    for each camera of an image policy, ``observation.images.<camera>`` (n, n_obs, S, S, 3)
    uint8 rendered at ``config.image_size``, with the same history (clamped at the
    episode start) as the state; n is the number of envs still running."""
    device = next(policy.parameters()).device
    cfg = policy.config
    cameras = policy_cameras(policy)
    n_obs, n_act = cfg.n_obs_steps, cfg.n_action_steps
    envs = MetaWorldBatch(list(tasks), list(seeds), max_steps=max_steps)
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
            batch: dict[str, Any] = {"task": [instructions[i] for i in active]}
            if cfg.state_dim > 0:
                batch[STATE_KEY] = torch.as_tensor(np.stack(history, axis=1)[active], device=device)  # (n, n_obs, S)
            seen = [max(0, t - n_obs + 1 + j) for j in range(n_obs)]  # clamped at the episode start
            for key in cameras:
                stacked = np.stack([image_history[step][key][active] for step in seen], axis=1)  # (n, n_obs, S, S, 3)
                batch[key] = torch.as_tensor(stacked, device=device)
            chunk[active] = policy.predict_action_chunk(batch).float().cpu().numpy()
        if record:
            images = [envs.envs[i].render("corner2", render_size) for i in range(record)]
            for i, image in enumerate(images):
                if not envs.done[i]:
                    frames[i].append(image)
        obs, _, _ = envs.step(chunk[:, t % n_act])
        history.append(obs)
        t += 1
    result = {"success": envs.success.copy(), "steps": envs.steps.copy(), "frames": frames}
    envs.close()
    return result


def evaluate_metaworld(
    policy: MoDEPolicy,
    tasks: str | Sequence[str],
    episodes_per_task: int = 50,
    seed: int = 0,
    batch_size: int = 100,
    max_steps: int = MAX_EPISODE_STEPS,
    video_dir: str | Path | None = None,
    videos_per_task: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Success per task and overall (with 95% Wilson intervals) on held-out seeds."""
    task_list = resolve_tasks(tasks)
    cfg = policy.config
    if cfg.state_dim not in (OBS_DIM, 0) or cfg.action_dim != ACTION_DIM:
        raise ValueError(
            f"Meta-World has {OBS_DIM}-d states and {ACTION_DIM}-d actions; this policy was trained on "
            f"state_dim={cfg.state_dim}, action_dim={cfg.action_dim}"
        )
    policy_cameras(policy)  # fail before any rollout when the cameras cannot be rendered
    policy.eval()
    policy.reset()
    jobs = [(t, eval_seed(t, i, seed), i) for t in task_list for i in range(episodes_per_task)]
    successes = {t: 0 for t in task_list}
    lengths: dict[str, list[int]] = {t: [] for t in task_list}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="evaluating", unit="episode", dynamic_ncols=True)
    for lo in range(0, len(jobs), batch_size):
        part = jobs[lo : lo + batch_size]
        want_video = [j for j, (_, _, i) in enumerate(part) if video_dir is not None and i < videos_per_task]
        order = want_video + [j for j in range(len(part)) if j not in want_video]  # recorded envs first
        part = [part[j] for j in order]
        out = rollout_batch(policy, [p[0] for p in part], [p[1] for p in part], max_steps, record=len(want_video))
        for (task, env_seed, i), ok, n in zip(part, out["success"], out["steps"]):
            successes[task] += int(ok)
            lengths[task].append(int(n))
        for (task, _, i), frames in zip(part, out["frames"]):
            if frames:
                _write_video(Path(video_dir) / f"{task}_ep{i:03d}.mp4", frames)
        if bar is not None:
            bar.update(len(part))
            done = sum(len(v) for v in lengths.values())
            bar.set_postfix(success=f"{sum(successes.values()) / max(done, 1):.2f}")
    if bar is not None:
        bar.close()
    per_task = {}
    for t in task_list:
        lo_ci, hi_ci = wilson_interval(successes[t], episodes_per_task)
        per_task[t] = {
            "instruction": INSTRUCTIONS[t], "success_rate": successes[t] / episodes_per_task,
            "successes": successes[t], "episodes": episodes_per_task, "ci95": [lo_ci, hi_ci],
            "mean_steps": float(np.mean(lengths[t])),
        }
    total = sum(successes.values())
    n = episodes_per_task * len(task_list)
    return {
        "env": "metaworld", "seed": seed, "episodes_per_task": episodes_per_task, "per_task": per_task,
        "overall": {"success_rate": total / n, "successes": total, "episodes": n, "ci95": list(wilson_interval(total, n))},
    }


def format_success_table(result: dict[str, Any]) -> str:
    """A plain-text table of per-task success with confidence intervals."""
    rows = [f"{'task':<28} {'success':>8} {'95% CI':>15}  episodes"]
    for task, r in result["per_task"].items():
        rows.append(f"{task:<28} {r['success_rate']:>8.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]  {r['episodes']:>8}")
    o = result["overall"]
    rows.append(f"{'overall':<28} {o['success_rate']:>8.3f} [{o['ci95'][0]:.2f}, {o['ci95'][1]:.2f}]  {o['episodes']:>8}")
    return "\n".join(rows)


def save_eval(result: dict[str, Any], path: str | Path) -> Path:
    return atomic_write_json(path, result)
