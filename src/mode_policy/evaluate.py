"""Policy evaluation in Meta-World: batched rollouts on held-out initial conditions.

Episodes use seeds from the evaluation range of
:mod:`mode_policy.envs.metaworld_env`, disjoint from the demonstration range,
so the policy is scored on initial conditions it never saw. All active
environments re-plan together: one batched ``predict_action_chunk`` call per
chunk for every env still running.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .confidence import wilson_interval
from .envs.metaworld_env import (
    ACTION_DIM, INSTRUCTIONS, MAX_EPISODE_STEPS, OBS_DIM, MetaWorldBatch, eval_seed, resolve_tasks,
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
    steps, and (for the first ``record`` envs) lists of rendered frames."""
    device = next(policy.parameters()).device
    cfg = policy.config
    envs = MetaWorldBatch(list(tasks), list(seeds), max_steps=max_steps)
    obs = envs.reset()
    history: deque[np.ndarray] = deque([obs] * cfg.n_obs_steps, maxlen=cfg.n_obs_steps)
    instructions = envs.instructions
    chunk = np.zeros((len(envs), cfg.horizon, cfg.action_dim), dtype=np.float32)
    frames: list[list[np.ndarray]] = [[] for _ in range(record)]
    t = 0
    while not envs.all_done and t < max_steps:
        if t % cfg.n_action_steps == 0:
            active = np.flatnonzero(~envs.done)
            state = torch.as_tensor(np.stack(history, axis=1)[active], device=device)  # (n, n_obs, S)
            batch = {STATE_KEY: state, "task": [instructions[i] for i in active]}
            chunk[active] = policy.predict_action_chunk(batch).float().cpu().numpy()
        if record:
            images = [envs.envs[i].render("corner2", render_size) for i in range(record)]
            for i, image in enumerate(images):
                if not envs.done[i]:
                    frames[i].append(image)
        obs, _, _ = envs.step(chunk[:, t % cfg.n_action_steps])
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
    if (cfg.state_dim, cfg.action_dim) != (OBS_DIM, ACTION_DIM):
        raise ValueError(
            f"Meta-World has {OBS_DIM}-d states and {ACTION_DIM}-d actions; this policy was trained on "
            f"state_dim={cfg.state_dim}, action_dim={cfg.action_dim}"
        )
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
