"""Training windows over episodes: observation history + action chunk.

For a frame ``t`` of an episode ``[start, end)`` a window holds the
observations at ``t - n_obs + 1 .. t`` (clamped to the episode start, i.e. the
first frame repeated) and the actions at ``t .. t + horizon - 1``; actions past
the episode end repeat the last action and are flagged in ``action_is_pad``.

States, actions and episode bounds live in memory as tensors and a batch is
gathered with one index computation (no per-sample Python), which is what a 2-core
CPU needs. Camera images (video or image features) are decoded once, when loading,
either into one uint8 tensor (N, H, W, 3) per camera (the default), or into an
on-disk frame cache (:mod:`.frame_cache`) that later runs reuse and batches are read
from, holding at most ``memory_budget_mb`` of frames in memory. Camera history uses
the same indices as the state history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..constants import ACTION_IS_PAD_KEY, ACTION_KEY, GOAL_KEY, STATE_KEY, TASK_KEY
from ..errors import ConfigError, DataError
from .frame_cache import (
    DiskFrames,
    cached_camera,
    default_cache_dir,
    episode_frames,
    load_frames,
)
from .metadata import PICTURE_DTYPES
from .reader import DatasetReader

Frames = Tensor | DiskFrames  # one camera's frames (N, H, W, 3) uint8, in memory or in the frame cache


def dataset_cameras(root: str | Path) -> dict[str, tuple[int, ...]]:
    """Camera features (dtype video or image) of a dataset and their declared shapes
    (H, W, 3), in ``info.json`` order. Reads metadata only."""
    ds = DatasetReader(root)
    return {k: tuple(ft["shape"]) for k, ft in ds.features.items() if ft["dtype"] in PICTURE_DTYPES}


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
    images: dict[str, Frames] = field(default_factory=dict)  # camera key -> (N, H, W, 3) uint8
    camera_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # every camera of the dataset

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
            ACTION_KEY: {"min": self.action.min(0).values.tolist(), "max": self.action.max(0).values.tolist()},
            STATE_KEY: {"mean": self.state.mean(0).tolist(), "std": self.state.std(0).tolist()},
        }


def load_episodes(
    root: str | Path,
    image_keys: Sequence[str] | None = None,
    progress: bool = True,
    *,
    cache_dir: str | Path | None = None,
    memory_budget_mb: float | None = None,
    image_size: int | None = None,
) -> EpisodeData:
    """Read a LeRobot dataset's state, action, episode bounds and instructions, and the
    camera features named in ``image_keys`` (e.g. ``["observation.images.corner"]``).

    By default each camera is decoded, here, into an in-memory uint8 tensor (N, H, W, 3):
    that costs N * H * W * 3 bytes per camera (12.3 MB per 1,000 frames at 64 x 64,
    49 MB at 128 x 128), so a 100k-frame dataset with two 64 px cameras needs ~2.5 GB.

    With ``cache_dir`` or ``memory_budget_mb`` (empty / 0 count as not given) each camera is
    decoded once into the frame cache in ``cache_dir`` (default
    :func:`~mode_policy.data.frame_cache.default_cache_dir`), which later loads reuse and a
    changed dataset or ``image_size`` rebuilds. Cameras are then read whole into memory while
    they fit in ``memory_budget_mb`` (no budget: all of them), and the others stay on disk as
    :class:`~mode_policy.data.frame_cache.DiskFrames`, read batch by batch.

    ``image_size`` resizes every camera to ``image_size`` x ``image_size`` (None or 0: the
    dataset's size). ``image_keys`` None or empty loads no images (videos are not touched).
    A progress bar is shown when decoding takes more than a couple of seconds (``progress``).

    Raises :class:`~mode_policy.errors.DataNotFoundError` / :class:`~mode_policy.errors.DataError`
    naming the dataset and the problem, :class:`~mode_policy.errors.ConfigError` naming a
    cache folder that cannot be written.
    """
    if memory_budget_mb is not None and not memory_budget_mb >= 0:
        raise ConfigError(f"memory_budget_mb={memory_budget_mb!r}: must be >= 0 (0: no budget)")
    if image_size is not None and image_size < 0:
        raise ConfigError(f"image_size={image_size!r}: must be >= 0 (0: the dataset's size)")
    ds = DatasetReader(root)
    for key in (STATE_KEY, ACTION_KEY):
        if key not in ds.features:
            raise DataError(f"dataset {root} has no {key!r} feature (has: {', '.join(sorted(ds.features))})")
    state = torch.as_tensor(ds.column(STATE_KEY), dtype=torch.float32).reshape(ds.num_frames, -1)
    action = torch.as_tensor(ds.column(ACTION_KEY), dtype=torch.float32).reshape(ds.num_frames, -1)
    for name, value in ((STATE_KEY, state), (ACTION_KEY, action)):
        if not torch.isfinite(value).all():
            bad = int((~torch.isfinite(value)).any(-1).nonzero()[0])
            raise DataError(f"dataset {root}: {name} contains NaN/inf (first at frame {bad})")
    bounds = np.asarray(ds.episode_bounds, dtype=np.int64)
    episode_tasks = _episode_instructions(ds, bounds, root)
    tasks = sorted(set(episode_tasks))
    task_of = {t: i for i, t in enumerate(tasks)}
    start = torch.empty(ds.num_frames, dtype=torch.long)
    end = torch.empty(ds.num_frames, dtype=torch.long)
    task_index = torch.empty(ds.num_frames, dtype=torch.long)
    for (lo, hi), task in zip(bounds.tolist(), episode_tasks):
        start[lo:hi], end[lo:hi], task_index[lo:hi] = lo, hi, task_of[task]
    cameras = {k: tuple(ft["shape"]) for k, ft in ds.features.items() if ft["dtype"] in PICTURE_DTYPES}
    keys = list(dict.fromkeys(image_keys or []))
    size = (image_size, image_size) if image_size else None
    if cache_dir or memory_budget_mb:
        budget = memory_budget_mb * 2**20 if memory_budget_mb else float("inf")
        images = _cached_cameras(ds, keys, cameras, size, Path(cache_dir or default_cache_dir()), budget, progress)
    else:
        images = _decode_cameras(ds, keys, cameras, size, progress)
    return EpisodeData(state, action, start, end, task_index, tasks, bounds, images, cameras)


def _episode_instructions(ds: DatasetReader, bounds: np.ndarray, root: str | Path) -> list[str]:
    """Each episode's instruction: from the episode metadata, else from its frames' ``task_index``
    (LeRobot's two places for it); DataError when an episode has neither, rather than training
    it under an empty instruction."""
    tasks = list(ds.episode_tasks)
    missing = [i for i, t in enumerate(tasks) if not t.strip()]
    if missing and "task_index" in ds.features and ds.tasks:
        frame_tasks = ds.column("task_index").reshape(-1)
        for i in missing:
            index = int(frame_tasks[bounds[i][0]])
            if 0 <= index < len(ds.tasks):
                tasks[i] = ds.tasks[index]
        missing = [i for i, t in enumerate(tasks) if not t.strip()]
    if missing:
        raise DataError(
            f"dataset {root}: episode(s) {missing[:8]} have no task instruction (neither in the "
            "episode metadata nor through task_index); MoDE is conditioned on it"
        )
    return tasks


def _check_cameras(ds: DatasetReader, keys: list[str], cameras: dict[str, tuple[int, ...]]) -> None:
    unknown = [k for k in keys if k not in cameras]
    if unknown:
        have = ", ".join(cameras) or "none"
        raise DataError(f"dataset {ds.root} has no camera feature(s) {unknown} (camera features: {have})")
    for key in keys:
        if len(cameras[key]) != 3 or cameras[key][2] != 3:
            raise DataError(f"dataset {ds.root}: camera {key!r} has shape {list(cameras[key])}, expected [H, W, 3]")


def _progress_bar(total: int, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc="decoding camera frames", unit="frame", unit_scale=True, disable=not progress, delay=2.0
    )


def _decode_cameras(
    ds: DatasetReader,
    keys: list[str],
    cameras: dict[str, tuple[int, ...]],
    size: tuple[int, int] | None,
    progress: bool,
) -> dict[str, Tensor]:
    """Decode every episode of each camera in ``keys`` into one (N, h, w, 3) uint8 tensor."""
    _check_cameras(ds, keys, cameras)
    if not keys:
        return {}
    out: dict[str, Tensor] = {}
    # bounds are sorted by episode_index; frames are global "index" positions
    bar = _progress_bar(ds.num_frames * len(keys), progress)
    try:
        for key in keys:
            buffer = torch.empty((ds.num_frames, *(size or cameras[key][:2]), 3), dtype=torch.uint8)
            for i, (lo, hi) in enumerate(ds.episode_bounds.tolist()):
                buffer[lo:hi] = torch.from_numpy(episode_frames(ds, key, i, size))
                bar.update(hi - lo)
            out[key] = buffer
    finally:
        bar.close()
    return out


def _cached_cameras(
    ds: DatasetReader,
    keys: list[str],
    cameras: dict[str, tuple[int, ...]],
    size: tuple[int, int] | None,
    cache_dir: Path,
    budget_bytes: float,
    progress: bool,
) -> dict[str, Frames]:
    """Each camera in ``keys`` from the frame cache (built first where needed): read whole into
    memory while the cameras so far fit in ``budget_bytes``, else left on disk."""
    _check_cameras(ds, keys, cameras)
    out: dict[str, Frames] = {}
    bar = _progress_bar(ds.num_frames * len(keys), progress)
    try:
        for key in keys:
            entry = cached_camera(ds, key, size, cache_dir, bar.update)
            if entry.total_bytes <= budget_bytes:
                out[key] = load_frames(entry)
                budget_bytes -= entry.total_bytes
            else:
                out[key] = DiskFrames(entry.frames, entry.num_frames, entry.height, entry.width)
    finally:
        bar.close()
    return out


def take_frames(frames: Frames, index: Tensor) -> Tensor:
    """frames (N, H, W, 3), index (*I) long -> (*I, H, W, 3) uint8."""
    if isinstance(frames, DiskFrames):
        return frames[index]
    return frames.index_select(0, index.reshape(-1)).view(*index.shape, *frames.shape[1:])


class WindowSampler:
    """Gathers batches of windows from :class:`EpisodeData`.

    A batch holds ``observation.state`` (B, n_obs, S), every loaded camera
    ``observation.images.<cam>`` (B, n_obs, H, W, 3) uint8 (same history indices as
    the state), ``action`` (B, H, A), ``action_is_pad`` (B, H) and ``goal`` or ``task``.

    ``goal_table`` (num_tasks, goal_dim) holds the goal vector of each task,
    computed once (e.g. by a frozen language encoder); without it the batch
    carries ``task`` strings instead.
    """

    def __init__(self, data: EpisodeData, n_obs_steps: int, horizon: int, goal_table: Tensor | None = None) -> None:
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
            ACTION_KEY: d.action[act_idx],  # (B, H, A)
            ACTION_IS_PAD_KEY: is_pad,  # (B, H)
        }
        for key, images in d.images.items():
            batch[key] = take_frames(images, obs_idx)  # (B, n_obs, H, W, 3) uint8
        task_index = d.task_index[frames]
        if self.goal_table is not None:
            batch[GOAL_KEY] = self.goal_table[task_index]  # (B, goal_dim)
        else:
            batch[TASK_KEY] = [d.tasks[i] for i in task_index.tolist()]
        return batch
