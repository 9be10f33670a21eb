"""Training windows over episodes: observation history + action chunk.

For a frame ``t`` of an episode ``[start, end)`` a window holds the
observations at ``t - n_obs + 1 .. t`` (clamped to the episode start, i.e. the
first frame repeated) and the actions at ``t .. t + horizon - 1``; actions past
the episode end repeat the last action and are flagged in ``action_is_pad``.

The whole dataset lives in memory as tensors and a batch is gathered with one
index computation (no per-sample Python), which is what a 2-core CPU needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .lerobot_format import LeRobotDataset

STATE_KEY = "observation.state"


@dataclass
class EpisodeData:
    """Frames of all episodes, concatenated, plus their boundaries and tasks."""

    state: Tensor  # (N, S) float32
    action: Tensor  # (N, A) float32
    episode_start: Tensor  # (N,) long: first frame of each frame's episode
    episode_end: Tensor  # (N,) long: one past the last frame of each frame's episode
    task_index: Tensor  # (N,) long: index into ``tasks``
    tasks: list[str]  # instruction of each task index
    episode_bounds: np.ndarray  # (E, 2)

    @property
    def num_frames(self) -> int:
        return self.action.shape[0]

    @property
    def state_dim(self) -> int:
        return self.state.shape[1]

    @property
    def action_dim(self) -> int:
        return self.action.shape[1]

    def stats(self) -> dict[str, dict[str, list[float]]]:
        """Normalisation statistics: action min/max, state mean/std."""
        return {
            "action": {"min": self.action.min(0).values.tolist(), "max": self.action.max(0).values.tolist()},
            STATE_KEY: {"mean": self.state.mean(0).tolist(), "std": self.state.std(0).tolist()},
        }


def load_episodes(root: str | Path) -> EpisodeData:
    """Read a LeRobot dataset's state, action, episode bounds and instructions.

    Raises FileNotFoundError / ValueError naming the dataset and the problem.
    """
    ds = LeRobotDataset(root)
    for key in (STATE_KEY, "action"):
        if key not in ds.features:
            raise ValueError(f"dataset {root} has no {key!r} feature (has: {', '.join(sorted(ds.features))})")
    state = torch.as_tensor(ds.column(STATE_KEY), dtype=torch.float32).reshape(ds.num_frames, -1)
    action = torch.as_tensor(ds.column("action"), dtype=torch.float32).reshape(ds.num_frames, -1)
    for name, value in (("observation.state", state), ("action", action)):
        if not torch.isfinite(value).all():
            bad = int((~torch.isfinite(value)).any(-1).nonzero()[0])
            raise ValueError(f"dataset {root}: {name} contains NaN/inf (first at frame {bad})")
    tasks = sorted(set(ds.episode_tasks))
    task_of = {t: i for i, t in enumerate(tasks)}
    bounds = np.asarray(ds.episode_bounds, dtype=np.int64)
    start = torch.empty(ds.num_frames, dtype=torch.long)
    end = torch.empty(ds.num_frames, dtype=torch.long)
    task_index = torch.empty(ds.num_frames, dtype=torch.long)
    for (lo, hi), task in zip(bounds.tolist(), ds.episode_tasks):
        start[lo:hi], end[lo:hi], task_index[lo:hi] = lo, hi, task_of[task]
    return EpisodeData(state, action, start, end, task_index, tasks, bounds)


class WindowSampler:
    """Gathers batches of windows from :class:`EpisodeData`.

    ``goal_table`` (num_tasks, goal_dim) holds the goal vector of each task,
    computed once (e.g. by a frozen language encoder); without it the batch
    carries ``task`` strings instead.
    """

    def __init__(
        self, data: EpisodeData, n_obs_steps: int, horizon: int, goal_table: Tensor | None = None
    ) -> None:
        self.data = data
        self.goal_table = goal_table
        self.obs_offsets = torch.arange(-n_obs_steps + 1, 1)  # (n_obs,)
        self.action_offsets = torch.arange(horizon)  # (H,)

    def __len__(self) -> int:
        return self.data.num_frames

    def batch(self, frames: Tensor) -> dict[str, Tensor | list[str]]:
        """frames: (B,) global frame indices -> a training batch."""
        d = self.data
        start, end = d.episode_start[frames, None], d.episode_end[frames, None]  # (B, 1)
        obs_idx = torch.maximum(frames[:, None] + self.obs_offsets, start)  # (B, n_obs)
        act_idx = frames[:, None] + self.action_offsets  # (B, H)
        is_pad = act_idx >= end
        act_idx = torch.minimum(act_idx, end - 1)
        batch: dict[str, Tensor | list[str]] = {
            STATE_KEY: d.state[obs_idx],  # (B, n_obs, S)
            "action": d.action[act_idx],  # (B, H, A)
            "action_is_pad": is_pad,  # (B, H)
        }
        task_index = d.task_index[frames]
        if self.goal_table is not None:
            batch["goal"] = self.goal_table[task_index]  # (B, goal_dim)
        else:
            batch["task"] = [d.tasks[i] for i in task_index.tolist()]
        return batch
