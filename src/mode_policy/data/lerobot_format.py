"""The LeRobotDataset file format: write v3.0, read v3.0 and v2.1.

v3.0 layout (as written by HuggingFace LeRobot >= 0.4)::

    meta/info.json                                  fps, features, totals, path templates
    meta/stats.json                                 {feature: {min, max, mean, std, count, ...}}
    meta/tasks.parquet                              task string (pandas index "task") + task_index
    meta/episodes/chunk-XXX/file-XXX.parquet        one row per episode: tasks, length, file refs,
                                                    frame range, video segment, stats/...
    data/chunk-XXX/file-XXX.parquet                 one row per frame, several episodes per file
    videos/<key>/chunk-XXX/file-XXX.mp4             several episodes per file, back to back

v2.1 keeps one parquet and one mp4 per episode and describes episodes and tasks
in ``meta/episodes.jsonl`` / ``meta/tasks.jsonl``.

Vector features are (fixed-size) list columns; shape-(1,) features are scalar
columns. Every reading error names the offending file.
"""

from __future__ import annotations

import io
import json
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import av
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..fileio import atomic_write, atomic_write_json, atomic_write_text

CODEBASE_VERSION = "v3.0"
LEGACY_VERSION = "v2.1"
SUPPORTED_VERSIONS = (CODEBASE_VERSION, LEGACY_VERSION)

DEFAULT_CHUNK_SIZE = 1000  # max files per chunk folder
DEFAULT_DATA_FILE_SIZE_IN_MB = 100  # LeRobot's defaults, recorded in info.json
DEFAULT_VIDEO_FILE_SIZE_IN_MB = 500

INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
EPISODES_PATH = EPISODES_DIR + "/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"

LEGACY_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
LEGACY_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
LEGACY_EPISODES_PATH = "meta/episodes.jsonl"
LEGACY_TASKS_PATH = "meta/tasks.jsonl"
LEGACY_EPISODES_STATS_PATH = "meta/episodes_stats.jsonl"

# Per-frame bookkeeping columns every LeRobot dataset has (listed in info.json features).
INDEX_FEATURES: dict[str, dict] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}

# Columns of the v3.0 episodes parquet that are format bookkeeping, not user "extra" metadata.
_EPISODE_COLUMNS = {"episode_index", "tasks", "length", "dataset_from_index", "dataset_to_index"}
_EPISODE_PREFIXES = ("data/", "videos/", "stats/", "meta/episodes/", "__index_level_")
_LEGACY_EPISODE_COLUMNS = {"episode_index", "tasks", "length"}

_IMAGE_SAMPLES = 100  # frames per episode sampled for image statistics (as LeRobot)
_STAT_NAMES = ("min", "max", "mean", "std", "count")
_PICTURES = ("video", "image")  # feature dtypes decoded to uint8 (T, H, W, 3)


class LeRobotFormatError(ValueError):
    """A dataset file is malformed, inconsistent or of an unsupported version."""


# --------------------------------------------------------------------------- helpers


def numeric_dtype(ft: Mapping[str, Any]) -> np.dtype | None:
    """The numpy dtype of a numeric feature, None for video/image/string/unknown."""
    dtype = ft.get("dtype")
    if not isinstance(dtype, str) or dtype in ("video", "image", "string"):
        return None
    try:
        np_dtype = np.dtype(dtype)
    except TypeError:
        return None
    return np_dtype if np_dtype.kind in "biuf" else None


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LeRobotFormatError(f"{path}: not valid JSON ({e})") from None


def _load_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise LeRobotFormatError(f"{path}, line {n}: not valid JSON ({e})") from None
        if not isinstance(row, dict):
            raise LeRobotFormatError(f"{path}, line {n}: expected a JSON object")
        rows.append(row)
    return rows


def _read_schema(path: Path) -> pa.Schema:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return pq.read_schema(path)
    except (pa.ArrowException, OSError) as e:
        raise LeRobotFormatError(f"{path}: unreadable parquet file, truncated or corrupt ({e})") from None


def _read_parquet(path: Path, columns: Sequence[str] | None = None, filters: Any = None) -> pa.Table:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    if columns is not None:
        missing = [c for c in columns if c not in _read_schema(path).names]
        if missing:
            raise LeRobotFormatError(f"{path}: missing column(s) {missing}")
    try:
        return pq.read_table(path, columns=list(columns) if columns is not None else None, filters=filters)
    except (pa.ArrowException, OSError) as e:
        raise LeRobotFormatError(f"{path}: unreadable parquet file, truncated or corrupt ({e})") from None


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _arrow_to_numpy(
    col: pa.ChunkedArray | pa.Array, shape: Sequence[int] | None, dtype: np.dtype | None, where: str
) -> np.ndarray:
    """A (nested) list or scalar column as an array (N, *shape); shape None keeps the stored one."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if isinstance(arr, pa.ExtensionArray):
        arr = arr.storage
    n = len(arr)
    dims: list[int] = []
    values = arr
    while _is_list(values.type):
        if values.null_count:
            raise LeRobotFormatError(f"{where}: column has {values.null_count} null entries")
        if pa.types.is_fixed_size_list(values.type):
            dims.append(values.type.list_size)
        else:
            lengths = np.unique(pc.list_value_length(values).to_numpy(zero_copy_only=False))
            if len(lengths) > 1:
                raise LeRobotFormatError(f"{where}: rows have different lengths {lengths.tolist()}")
            dims.append(int(lengths[0]) if len(lengths) else 0)
        values = values.flatten()
        if isinstance(values, pa.ExtensionArray):
            values = values.storage
    if values.null_count:
        raise LeRobotFormatError(f"{where}: column has {values.null_count} null values")
    if not _is_number(values.type):
        raise LeRobotFormatError(f"{where}: column of type {arr.type} is not numeric")
    out = values.to_numpy(zero_copy_only=False).reshape(n, *dims)  # (N, *stored dims)
    if shape is not None:
        shape = tuple(int(s) for s in shape)
        if int(np.prod(shape)) != int(np.prod(dims)):
            raise LeRobotFormatError(f"{where}: per-frame shape {tuple(dims)} does not match declared shape {shape}")
        out = out.reshape(n, *shape)
    if dtype is not None and out.dtype != dtype:
        out = out.astype(dtype)
    return out


def _decode_images(col: pa.ChunkedArray, where: str) -> np.ndarray:
    """Image column (struct of PNG/JPEG ``bytes`` and ``path``) as uint8 (N, H, W, 3)."""
    from PIL import Image  # optional: only image-dtype datasets need it

    images = []
    for item in col.to_pylist():
        try:
            data = item.get("bytes") if isinstance(item, dict) else None
            img = Image.open(io.BytesIO(data)) if data else Image.open(item["path"])
            images.append(np.asarray(img.convert("RGB")))
        except Exception as e:  # noqa: BLE001 - any decode failure becomes one clear error
            raise LeRobotFormatError(f"{where}: cannot decode image ({e})") from None
    return np.stack(images) if images else np.zeros((0, 0, 0, 3), np.uint8)


def _frame_time(frame: av.VideoFrame, stream: av.video.stream.VideoStream, counter: int, fps: float) -> float:
    if frame.time is not None:
        return float(frame.time)
    if frame.pts is not None and stream.time_base is not None:
        return float(frame.pts * stream.time_base)
    return counter / fps


def _decode_range(path: Path, lo: float, hi: float, fps: float, seek: bool) -> tuple[np.ndarray, list[np.ndarray]]:
    """Decode the frames of ``path`` whose time lies in [lo, hi]: times (K,), images K x (H, W, 3)."""
    times: list[float] = []
    images: list[np.ndarray] = []
    # One reformatter for all frames: frame.to_ndarray(format=...) builds a new swscale
    # context per frame, which costs ~5 ms even for a 64 x 64 frame (PyAV 18).
    reformatter = av.video.reformatter.VideoReformatter()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise LeRobotFormatError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if seek and lo > 0 and stream.time_base is not None:
                container.seek(int(lo / stream.time_base), stream=stream, backward=True, any_frame=False)
            for k, frame in enumerate(container.decode(stream)):
                t = _frame_time(frame, stream, k, fps)
                if t > hi:
                    break
                if t >= lo:
                    times.append(t)
                    images.append(reformatter.reformat(frame, format="rgb24").to_ndarray())
    except av.error.FFmpegError as e:
        raise LeRobotFormatError(f"{path}: cannot decode video ({e})") from None
    return np.asarray(times, dtype=np.float64), images


def decode_video_segment(path: Path, timestamps: np.ndarray, fps: float) -> np.ndarray:
    """Frames of ``path`` nearest to ``timestamps`` (seconds in the file), uint8 (T, H, W, 3).

    Like LeRobot, each requested time takes the closest decoded frame; a gap
    larger than 0.4 frame periods is an error naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: video file not found")
    timestamps = np.asarray(timestamps, dtype=np.float64)
    if timestamps.size == 0:
        raise LeRobotFormatError(f"{path}: no timestamps requested")
    tol = 0.4 / fps
    lo, hi = float(timestamps.min()) - tol, float(timestamps.max()) + tol
    for seek in (True, False):  # an inexact seek falls back to decoding from the start
        times, images = _decode_range(path, lo, hi, fps, seek)
        if len(times):
            nearest = np.abs(times[None, :] - timestamps[:, None]).argmin(axis=1)  # (T,)
            if np.all(np.abs(times[nearest] - timestamps) <= tol):
                return np.stack([images[j] for j in nearest])
    raise LeRobotFormatError(
        f"{path}: no frame within {tol:.4f}s of the requested times {timestamps.min():.4f}..{timestamps.max():.4f}s "
        f"({len(times)} frames decoded there); the video and the episode metadata disagree"
    )


# --------------------------------------------------------------------------- statistics


def compute_stats(
    frames: Mapping[str, np.ndarray], features: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, np.ndarray]]:
    """LeRobot-style statistics of one episode: ``{feature: {min, max, mean, std, count}}``.

    Numeric features (T, *shape) give stats of shape ``shape``; video/image
    features (T, H, W, 3) uint8 give per-channel stats of shape (3, 1, 1) with
    values in [0, 1], from at most 100 evenly sampled frames (like LeRobot).
    Keys not in ``features`` (or of string dtype) are skipped."""
    stats: dict[str, dict[str, np.ndarray]] = {}
    for key, values in frames.items():
        ft = features.get(key)
        if ft is None:
            continue
        values = np.asarray(values)
        if ft.get("dtype") in ("video", "image"):
            pick = np.unique(np.round(np.linspace(0, len(values) - 1, min(len(values), _IMAGE_SAMPLES))).astype(int))
            data = values[pick].astype(np.float64) / 255.0  # (K, H, W, 3)
            stats[key] = {
                "min": data.min(axis=(0, 1, 2)).reshape(3, 1, 1),
                "max": data.max(axis=(0, 1, 2)).reshape(3, 1, 1),
                "mean": data.mean(axis=(0, 1, 2)).reshape(3, 1, 1),
                "std": data.std(axis=(0, 1, 2)).reshape(3, 1, 1),
                "count": np.array([len(pick)]),
            }
        elif numeric_dtype(ft) is not None:
            data = values.reshape(len(values), *[int(s) for s in ft["shape"]]).astype(np.float64)  # (T, *shape)
            stats[key] = {
                "min": data.min(axis=0),
                "max": data.max(axis=0),
                "mean": data.mean(axis=0),
                "std": data.std(axis=0),
                "count": np.array([len(data)]),
            }
    return stats


def aggregate_stats(stats_list: Sequence[Mapping[str, Mapping[str, np.ndarray]]]) -> dict[str, dict[str, np.ndarray]]:
    """Combine per-episode statistics (count-weighted mean, pooled std, global min/max)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    keys = dict.fromkeys(k for stats in stats_list for k in stats)
    for key in keys:
        parts = [s[key] for s in stats_list if key in s and all(m in s[key] for m in _STAT_NAMES)]
        if not parts:
            continue
        counts = np.array([float(np.asarray(p["count"]).reshape(-1)[0]) for p in parts])  # (P,)
        means = np.stack([np.asarray(p["mean"], dtype=np.float64) for p in parts])  # (P, *shape)
        variances = np.stack([np.asarray(p["std"], dtype=np.float64) ** 2 for p in parts])
        w = counts.reshape(-1, *([1] * (means.ndim - 1)))
        total = counts.sum()
        mean = (means * w).sum(axis=0) / total
        var = ((variances + (means - mean) ** 2) * w).sum(axis=0) / total
        out[key] = {
            "min": np.min(np.stack([np.asarray(p["min"]) for p in parts]), axis=0),
            "max": np.max(np.stack([np.asarray(p["max"]) for p in parts]), axis=0),
            "mean": mean,
            "std": np.sqrt(var),
            "count": np.array([int(total)]),
        }
    return out


def _stats_to_json(stats: Mapping[str, Mapping[str, np.ndarray]]) -> dict:
    return {k: {s: np.asarray(v).tolist() for s, v in ft.items()} for k, ft in stats.items()}


def _stats_from_json(raw: Any, path: Path) -> dict[str, dict[str, np.ndarray]]:
    if not isinstance(raw, dict):
        raise LeRobotFormatError(f"{path}: expected a JSON object of per-feature statistics")
    stats: dict[str, dict[str, np.ndarray]] = {}
    for key, ft in raw.items():
        if not isinstance(ft, dict):
            continue
        arrays = {}
        for name, value in ft.items():
            try:
                arr = np.asarray(value)
            except ValueError:  # ragged lists
                continue
            if arr.dtype.kind in "biuf":
                arrays[name] = np.atleast_1d(arr)
        stats[key] = arrays
    return stats


# --------------------------------------------------------------------------- reader


@dataclass
class _VideoRef:
    path: Path | None  # None when the episodes metadata lacks the segment
    from_ts: float = 0.0
    to_ts: float = 0.0


@dataclass
class _EpisodeRef:
    episode_index: int
    start: int  # global frame index, inclusive
    stop: int  # exclusive
    data_path: Path
    tasks: list[str]
    videos: dict[str, _VideoRef] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


class LeRobotDataset:
    """Read-only view of a LeRobotDataset (v3.0 or v2.1) on local disk.

    Episodes are ordered by ``episode_index``; ``episode(i)`` and
    ``video_frames(key, i)`` take the position ``i`` in that order.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: dataset folder not found")
        self._info_path = self.root / INFO_PATH
        if not self._info_path.is_file():
            raise FileNotFoundError(f"{self._info_path}: not found; {self.root} is not a LeRobotDataset")
        info = _load_json(self._info_path)
        if not isinstance(info, dict):
            raise LeRobotFormatError(f"{self._info_path}: expected a JSON object")
        self.info: dict = info
        self.version: str = str(info.get("codebase_version"))
        if self.version not in SUPPORTED_VERSIONS:
            raise LeRobotFormatError(
                f"{self._info_path}: unsupported codebase_version {info.get('codebase_version')!r} "
                f"(supported: {', '.join(SUPPORTED_VERSIONS)})"
            )
        try:
            self.fps: int = int(round(float(info["fps"])))
        except (KeyError, TypeError, ValueError):
            self.fps = 0
        raw_features = info.get("features")
        if self.fps <= 0 or not isinstance(raw_features, dict):
            raise LeRobotFormatError(f"{self._info_path}: needs a positive 'fps' and a 'features' object")
        self.features: dict[str, dict] = {}
        for name, ft in raw_features.items():
            if not isinstance(ft, dict) or "dtype" not in ft:
                raise LeRobotFormatError(f"{self._info_path}: feature {name!r} lacks a dtype")
            self.features[name] = {**ft, "shape": [int(s) for s in ft.get("shape") or [1]]}
        self.video_keys: list[str] = [k for k, ft in self.features.items() if ft["dtype"] == "video"]

        if self.version == CODEBASE_VERSION:
            self.tasks: list[str] = self._load_tasks_v3()
            self._episodes = self._load_episodes_v3()
            self.stats: dict[str, dict[str, np.ndarray]] = self._load_stats()
        else:
            self.tasks = self._load_tasks_v21()
            self._episodes = self._load_episodes_v21()
            self.stats = self._load_stats()
        self._data_files: list[Path] = list(dict.fromkeys(ep.data_path for ep in self._episodes))
        self._columns: dict[Path, list[str]] = {}  # data file -> its column names
        self._check_data_files()
        self._order: np.ndarray | None = None  # permutation sorting concatenated rows by "index"
        self._order_known = False

        self.num_episodes: int = len(self._episodes)
        self.num_frames: int = int(sum(ep.stop - ep.start for ep in self._episodes))
        # (num_episodes, 2) global [from, to) frame index of each episode
        self.episode_bounds: np.ndarray = np.array(
            [[ep.start, ep.stop] for ep in self._episodes], dtype=np.int64
        ).reshape(-1, 2)
        self.episode_indices: np.ndarray = np.array([ep.episode_index for ep in self._episodes], dtype=np.int64)
        self.episode_tasks: list[str] = [ep.tasks[0] if ep.tasks else "" for ep in self._episodes]  # first task
        self.episode_extra: list[dict] = [dict(ep.extra) for ep in self._episodes]  # e.g. {"seed": 3}

    # ------------------------------------------------------------------ public

    def column(self, key: str) -> np.ndarray:
        """All frames of a numeric feature, (N, *shape), ordered by global index.

        The bookkeeping columns (timestamp, frame_index, episode_index, index,
        task_index) come back flat, (N,)."""
        parts = list(self.iter_column(key))
        if not parts:
            shape, dtype = self._column_spec(key)
            return np.zeros((0, *(shape or [])), dtype=dtype)
        out = np.concatenate(parts)
        order = self._frame_order()
        return out if order is None else out[order]

    def iter_column(self, key: str) -> Iterator[np.ndarray]:
        """The column ``key`` one data file at a time (file order, not re-sorted)."""
        shape, dtype = self._column_spec(key)
        for path in self._data_files:
            table = _read_parquet(path, [key])
            yield _arrow_to_numpy(table.column(key), shape, dtype, f"{path}: column {key!r}")

    def episode(self, i: int, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Frames of the episode at position ``i``: numeric features (T, *shape) (bookkeeping
        columns (T,)), video and image features decoded to uint8 (T, H, W, 3).
        ``keys`` defaults to every numeric, video and image feature."""
        ep = self._episode_ref(i)
        if keys is None:
            keys = [k for k, ft in self.features.items() if numeric_dtype(ft) is not None or ft["dtype"] in _PICTURES]
        unknown = [k for k in keys if k not in self.features and k not in INDEX_FEATURES]
        if unknown:
            raise KeyError(f"{self.root}: unknown feature(s) {unknown}; features are {list(self.features)}")
        table_keys = [k for k in keys if k not in self.video_keys]
        out: dict[str, np.ndarray] = {}
        if table_keys:
            table = self._episode_table(ep, table_keys)
            for key in table_keys:
                where = f"{ep.data_path}: column {key!r}"
                if self.features.get(key, {}).get("dtype") == "image":
                    out[key] = _decode_images(table.column(key), where)
                else:
                    shape, dtype = self._column_spec(key)
                    out[key] = _arrow_to_numpy(table.column(key), shape, dtype, where)
        for key in keys:
            if key in self.video_keys:
                out[key] = self.video_frames(key, i)
        return {k: out[k] for k in keys}

    def video_frames(self, key: str, episode: int) -> np.ndarray:
        """Decoded frames uint8 (T, H, W, 3) of video ``key`` for the episode at position ``episode``."""
        if key not in self.video_keys:
            raise KeyError(f"{self.root}: {key!r} is not a video feature; video features are {self.video_keys}")
        ep = self._episode_ref(episode)
        ref = ep.videos.get(key)
        if ref is None or ref.path is None:
            raise LeRobotFormatError(
                f"{self.root / EPISODES_DIR}: episode {ep.episode_index} has no videos/{key}/... columns"
            )
        if "timestamp" in self._data_columns(ep.data_path):
            column = self._episode_table(ep, ["timestamp"]).column("timestamp")
            ts = _arrow_to_numpy(column, None, np.dtype(np.float64), str(ep.data_path)).reshape(-1)  # (T,)
        else:
            ts = np.arange(ep.stop - ep.start) / self.fps
        return decode_video_segment(ref.path, ref.from_ts + ts, self.fps)

    def __len__(self) -> int:
        return self.num_frames

    def __repr__(self) -> str:
        return (
            f"LeRobotDataset({str(self.root)!r}, version={self.version}, episodes={self.num_episodes}, "
            f"frames={self.num_frames}, fps={self.fps}, features={list(self.features)})"
        )

    # ------------------------------------------------------------------ metadata loading

    def _fill(self, template_key: str, default: str, **kwargs: Any) -> Path:
        template = self.info.get(template_key) or default
        try:
            return self.root / str(template).format(**kwargs)
        except (KeyError, IndexError, ValueError) as e:
            raise LeRobotFormatError(
                f"{self._info_path}: {template_key} {template!r} cannot be filled ({e!r})"
            ) from None

    def _load_tasks_v3(self) -> list[str]:
        path = self.root / TASKS_PATH
        table = _read_parquet(path)
        names = table.column_names
        task_col = "task" if "task" in names else None
        if task_col is None:  # pandas wrote the index under another name, e.g. __index_level_0__
            meta = table.schema.pandas_metadata or {}
            index_cols = [c for c in meta.get("index_columns", []) if isinstance(c, str) and c in names]
            types = {f.name: f.type for f in table.schema}
            string_cols = [c for c in names if pa.types.is_string(types[c]) or pa.types.is_large_string(types[c])]
            candidates = [c for c in index_cols if c in string_cols] or string_cols
            task_col = candidates[0] if candidates else None
        if task_col is None:
            raise LeRobotFormatError(f"{path}: no task string column (expected the index 'task')")
        tasks = table.column(task_col).to_pylist()
        indices = table.column("task_index").to_pylist() if "task_index" in names else list(range(len(tasks)))
        return self._task_list(tasks, indices, path)

    def _load_tasks_v21(self) -> list[str]:
        path = self.root / LEGACY_TASKS_PATH
        rows = _load_jsonl(path)
        try:
            return self._task_list([r["task"] for r in rows], [r["task_index"] for r in rows], path)
        except KeyError as e:
            raise LeRobotFormatError(f"{path}: each line needs 'task_index' and 'task' (missing {e})") from None

    @staticmethod
    def _task_list(tasks: list, indices: list, path: Path) -> list[str]:
        if any(t is None for t in tasks) or any(i is None for i in indices):
            raise LeRobotFormatError(f"{path}: null task or task_index")
        out: list[str | None] = [None] * (max(indices, default=-1) + 1)
        for task, idx in zip(tasks, indices):
            out[int(idx)] = str(task)
        holes = [i for i, t in enumerate(out) if t is None]
        if holes:
            raise LeRobotFormatError(f"{path}: task_index values {holes[:5]} have no task")
        return out  # type: ignore[return-value]

    def _load_episodes_v3(self) -> list[_EpisodeRef]:
        folder = self.root / EPISODES_DIR
        files = sorted(folder.glob("*/*.parquet"))
        if not files:
            raise FileNotFoundError(f"{folder}: no episodes parquet files (expected chunk-XXX/file-XXX.parquet)")
        rows: list[tuple[Path, dict]] = []
        for path in files:
            columns = [c for c in _read_schema(path).names if not c.startswith("stats/")]
            rows += [(path, row) for row in _read_parquet(path, columns).to_pylist()]
        rows.sort(key=lambda r: _need_int(r[1], "episode_index", r[0]))
        episodes: list[_EpisodeRef] = []
        cursor = 0
        for path, row in rows:
            index = _need_int(row, "episode_index", path)
            if row.get("dataset_from_index") is not None and row.get("dataset_to_index") is not None:
                start, stop = _need_int(row, "dataset_from_index", path), _need_int(row, "dataset_to_index", path)
            else:
                start, stop = cursor, cursor + _need_int(row, "length", path)
            if row.get("length") is not None and stop - start != int(row["length"]):
                raise LeRobotFormatError(
                    f"{path}: episode {index} has length {row['length']} but frames [{start}, {stop})"
                )
            cursor = stop
            data_path = self._fill(
                "data_path",
                DATA_PATH,
                chunk_index=_need_int(row, "data/chunk_index", path),
                file_index=_need_int(row, "data/file_index", path),
            )
            videos = {}
            for key in self.video_keys:
                cols = [f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
                if any(row.get(c) is None for c in cols):
                    videos[key] = _VideoRef(None)
                    continue
                chunk, file = int(row[cols[0]]), int(row[cols[1]])
                vpath = self._fill("video_path", VIDEO_PATH, video_key=key, chunk_index=chunk, file_index=file)
                videos[key] = _VideoRef(vpath, float(row[cols[2]]), float(row[cols[3]]))
            extra = {k: v for k, v in row.items() if k not in _EPISODE_COLUMNS and not k.startswith(_EPISODE_PREFIXES)}
            tasks = _task_strings(row.get("tasks"))
            episodes.append(_EpisodeRef(index, start, stop, data_path, tasks, videos, extra))
        _check_unique(episodes, folder)
        return episodes

    def _load_episodes_v21(self) -> list[_EpisodeRef]:
        path = self.root / LEGACY_EPISODES_PATH
        rows = sorted(_load_jsonl(path), key=lambda r: _need_int(r, "episode_index", path))
        chunks_size = int(self.info.get("chunks_size") or DEFAULT_CHUNK_SIZE)
        episodes: list[_EpisodeRef] = []
        cursor = 0
        for row in rows:
            index = _need_int(row, "episode_index", path)
            length = _need_int(row, "length", path)
            chunk = index // chunks_size
            data_path = self._fill("data_path", LEGACY_DATA_PATH, episode_chunk=chunk, episode_index=index)
            videos = {}
            for key in self.video_keys:
                vpath = self._fill(
                    "video_path", LEGACY_VIDEO_PATH, episode_chunk=chunk, video_key=key, episode_index=index
                )
                videos[key] = _VideoRef(vpath, 0.0, length / self.fps)
            extra = {k: v for k, v in row.items() if k not in _LEGACY_EPISODE_COLUMNS}
            tasks = _task_strings(row.get("tasks"))
            episodes.append(_EpisodeRef(index, cursor, cursor + length, data_path, tasks, videos, extra))
            cursor += length
        _check_unique(episodes, path)
        return episodes

    def _load_stats(self) -> dict[str, dict[str, np.ndarray]]:
        path = self.root / STATS_PATH
        if path.is_file():
            return _stats_from_json(_load_json(path), path)
        legacy = self.root / LEGACY_EPISODES_STATS_PATH
        if self.version == LEGACY_VERSION and legacy.is_file():
            per_episode = [_stats_from_json(r.get("stats", {}), legacy) for r in _load_jsonl(legacy)]
            try:
                return aggregate_stats(per_episode)
            except ValueError as e:  # inconsistent shapes across episodes
                raise LeRobotFormatError(f"{legacy}: cannot aggregate episode statistics ({e})") from None
        return {}

    def _check_data_files(self) -> None:
        """Every data file exists, has a readable footer and holds the numeric feature columns."""
        required = [k for k, ft in self.features.items() if numeric_dtype(ft) is not None]
        for path in self._data_files:
            if not path.is_file():
                raise FileNotFoundError(f"{path}: data file not found (referenced by the episodes metadata)")
            names = set(self._data_columns(path))
            missing = [k for k in required if k not in names]
            if missing:
                raise LeRobotFormatError(
                    f"{path}: missing column(s) {missing} declared in {self._info_path} features"
                )

    # ------------------------------------------------------------------ data access

    def _episode_ref(self, i: int) -> _EpisodeRef:
        if not -self.num_episodes <= i < self.num_episodes:
            raise IndexError(f"{self.root}: episode {i} out of range (dataset has {self.num_episodes})")
        return self._episodes[i]

    def _data_columns(self, path: Path) -> list[str]:
        if path not in self._columns:
            self._columns[path] = _read_schema(path).names
        return self._columns[path]

    def _column_spec(self, key: str) -> tuple[list[int] | None, np.dtype | None]:
        """(shape, dtype) to convert a column to; shape None for the flat bookkeeping columns."""
        if key in INDEX_FEATURES:
            return None, np.dtype(INDEX_FEATURES[key]["dtype"])
        ft = self.features.get(key)
        if ft is None:
            raise KeyError(f"{self.root}: unknown feature {key!r}; features are {list(self.features)}")
        dtype = numeric_dtype(ft)
        if dtype is None:
            raise LeRobotFormatError(
                f"{self._info_path}: feature {key!r} has dtype {ft['dtype']!r}, not numeric"
                + (" (use video_frames)" if ft["dtype"] == "video" else "")
            )
        return ft["shape"], dtype

    def _episode_table(self, ep: _EpisodeRef, keys: Sequence[str]) -> pa.Table:
        """The rows of ``ep`` (columns ``keys``), from its data file; checks the frame count."""
        names = self._data_columns(ep.data_path)
        if self.version == LEGACY_VERSION:
            table = _read_parquet(ep.data_path, keys)
        elif "index" in names:
            filters = (pc.field("index") >= ep.start) & (pc.field("index") < ep.stop)
            table = _read_parquet(ep.data_path, keys, filters)
        else:
            table = _read_parquet(ep.data_path, keys, pc.field("episode_index") == ep.episode_index)
        if table.num_rows != ep.stop - ep.start:
            raise LeRobotFormatError(
                f"{ep.data_path}: episode {ep.episode_index} has {table.num_rows} frames, "
                f"but the episodes metadata says {ep.stop - ep.start}"
            )
        return table

    def _frame_order(self) -> np.ndarray | None:
        """Permutation sorting concatenated file rows by global ``index`` (None: already sorted)."""
        if not self._order_known:
            self._order_known = True
            if all("index" in self._data_columns(p) for p in self._data_files):
                index = np.concatenate(list(self.iter_column("index")))
                if index.size and np.any(np.diff(index) < 0):
                    self._order = np.argsort(index, kind="stable")
        return self._order


def _need_int(row: Mapping[str, Any], key: str, path: Path) -> int:
    value = row.get(key)
    if value is None:
        raise LeRobotFormatError(f"{path}: missing {key!r} for an episode")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise LeRobotFormatError(f"{path}: {key!r} is {value!r}, not an integer") from None


def _task_strings(tasks: Any) -> list[str]:
    if tasks is None:
        return []
    if isinstance(tasks, str):
        return [tasks]
    return [str(t) for t in tasks]


def _check_unique(episodes: list[_EpisodeRef], where: Path) -> None:
    indices = [ep.episode_index for ep in episodes]
    if len(set(indices)) != len(indices):
        dup = sorted({i for i in indices if indices.count(i) > 1})
        raise LeRobotFormatError(f"{where}: episode_index {dup[:5]} listed more than once")


# --------------------------------------------------------------------------- writer


def _pick_video_codec() -> str:
    for name in ("libx264", "mpeg4"):
        try:
            av.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - codec missing from this av build
            continue
    raise RuntimeError("the installed av has neither a libx264 nor an mpeg4 encoder")


def _arrow_type(dtype: np.dtype, shape: Sequence[int]) -> pa.DataType:
    """Scalar for shape (1,), fixed-size list (of lists) otherwise."""
    t = pa.from_numpy_dtype(dtype)
    if list(shape) == [1]:
        return t
    for dim in reversed(shape):
        t = pa.list_(t, int(dim))
    return t


def _to_arrow(values: np.ndarray, shape: Sequence[int]) -> pa.Array:
    """(T, *shape) -> scalar or nested fixed-size list array of length T."""
    if list(shape) == [1]:
        return pa.array(values.reshape(-1))
    arr: pa.Array = pa.array(values.reshape(-1))
    for dim in reversed(shape):
        arr = pa.FixedSizeListArray.from_arrays(arr, int(dim))
    return arr


def _tasks_table(tasks: Sequence[str]) -> pa.Table:
    """meta/tasks.parquet as pandas writes ``DataFrame({"task_index"}, index=Index(tasks, name="task"))``."""
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks, pa.string())})

    def column(name: str | None, field_name: str | None, kind: str, np_type: str, meta: dict | None = None) -> dict:
        return {"name": name, "field_name": field_name, "pandas_type": kind, "numpy_type": np_type, "metadata": meta}

    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [column(None, None, "unicode", "object", {"encoding": "UTF-8"})],
        "columns": [column("task_index", "task_index", "int64", "int64"), column("task", "task", "unicode", "object")],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


class _VideoFile:
    """One open mp4 that consecutive episodes of one camera are appended to."""

    def __init__(self, path: Path, fps: int, height: int, width: int, codec: str, crf: int, gop: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.frames = 0  # frames written so far; the next episode starts at frames / fps seconds
        self._fps = fps
        self._container = av.open(str(path), "w")
        options = {"g": str(gop)}
        if codec == "mpeg4":  # no crf: bound the quantiser instead
            options |= {"qmin": "1", "qmax": "3"}
        else:
            options["crf"] = str(crf)
        self._stream = self._container.add_stream(codec, rate=fps, options=options)
        self._stream.width, self._stream.height = width, height
        # 4:2:0 needs even sizes; x264 can fall back to 4:4:4
        self._stream.pix_fmt = "yuv420p" if (width % 2 == 0 and height % 2 == 0) or codec != "libx264" else "yuv444p"
        self.pix_fmt = self._stream.pix_fmt

    def write(self, images: np.ndarray) -> None:
        """Append uint8 (T, H, W, 3) frames."""
        for image in images:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self.frames
            frame.time_base = Fraction(1, self._fps)
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            self.frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None


class LeRobotDatasetWriter:
    """Stream episodes into a new LeRobotDataset v3.0 folder.

    Episodes are appended to the current data parquet file and to one mp4 per
    camera; both move on to the next ``chunk-XXX/file-XXX`` once a file would
    exceed ``data_file_max_frames`` frames. Metadata (info, stats, tasks,
    episodes) is written by :meth:`finalize`, each file atomically; info.json
    last, so a folder without it is an unfinished dataset.

    ``features`` maps name -> {"dtype", "shape", "names"}; video features have
    dtype "video" (or are listed in ``video_keys``) and shape [H, W, 3].
    """

    def __init__(
        self,
        root: str | Path,
        fps: int,
        features: dict[str, dict],
        robot_type: str | None = None,
        video_keys: Sequence[str] = (),
        data_file_max_frames: int = 100_000,
        *,
        overwrite: bool = False,
        video_codec: str | None = None,
        video_crf: int = 18,
        video_gop: int = 2,
    ) -> None:
        if int(fps) != fps or fps <= 0:
            raise ValueError(f"fps must be a positive integer, got {fps!r}")
        if data_file_max_frames < 1:
            raise ValueError(f"data_file_max_frames must be >= 1, got {data_file_max_frames}")
        self.root = Path(root)
        self.fps = int(fps)
        self.robot_type = robot_type
        self.data_file_max_frames = int(data_file_max_frames)
        self.features = self._normalise_features(features, video_keys)
        self.video_keys = [k for k, ft in self.features.items() if ft["dtype"] == "video"]
        self._numeric_keys = [k for k in self.features if k not in self.video_keys]
        self._video_codec = video_codec or (_pick_video_codec() if self.video_keys else "")
        self._video_crf = int(video_crf)
        self._video_gop = int(video_gop)
        self._prepare_root(overwrite)

        stored = {k: ft for k, ft in {**self.features, **INDEX_FEATURES}.items() if k not in self.video_keys}
        self._schema = pa.schema([(k, _arrow_type(np.dtype(ft["dtype"]), ft["shape"])) for k, ft in stored.items()])
        self._tasks: dict[str, int] = {}
        self._episode_rows: list[dict] = []
        self._episode_stats: list[dict[str, dict[str, np.ndarray]]] = []
        self._extra_types: dict[str, type] = {}
        self._total_frames = 0
        self._chunk, self._file = 0, 0
        self._frames_in_file = 0
        self._pq_writer: pq.ParquetWriter | None = None
        self._videos: dict[str, _VideoFile] = {}
        self._video_info: dict[str, dict] = {}
        self._finalized = False
        self._closed = False

    # ------------------------------------------------------------------ setup

    @staticmethod
    def _normalise_features(features: Mapping[str, Mapping[str, Any]], video_keys: Sequence[str]) -> dict[str, dict]:
        if not features:
            raise ValueError("features is empty")
        unknown = [k for k in video_keys if k not in features]
        if unknown:
            raise ValueError(f"video_keys {unknown} are not in features")
        out: dict[str, dict] = {}
        for name, ft in features.items():
            if "/" in name:
                raise ValueError(f"feature {name!r}: names may not contain '/'")
            if name in INDEX_FEATURES:
                raise ValueError(f"feature {name!r}: reserved for the frame bookkeeping columns")
            try:
                shape = [int(s) for s in ft["shape"]]
                dtype = ft["dtype"]
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"feature {name!r}: needs 'dtype' and an integer 'shape'") from None
            if not shape or any(s <= 0 for s in shape):
                raise ValueError(f"feature {name!r}: shape {shape} must be non-empty and positive")
            if name in video_keys or dtype == "video":
                if len(shape) != 3 or shape[2] != 3:
                    raise ValueError(f"feature {name!r}: video shape must be [height, width, 3], got {shape}")
                names = ft.get("names") or ["height", "width", "channels"]
                out[name] = {"dtype": "video", "shape": shape, "names": names}
            elif numeric_dtype({"dtype": dtype}) is None:
                raise ValueError(f"feature {name!r}: dtype {dtype!r} is not supported (numeric dtypes or 'video')")
            else:
                out[name] = {"dtype": str(np.dtype(dtype)), "shape": shape, "names": ft.get("names")}
        return out

    def _prepare_root(self, overwrite: bool) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise FileExistsError(f"{self.root}: exists and is not a folder")
        if self.root.is_dir() and any(self.root.iterdir()):
            if not overwrite:
                raise FileExistsError(
                    f"{self.root}: folder exists and is not empty; pass overwrite=True to replace it"
                )
            known = {"meta", "data", "videos", "images", "README.md", ".gitattributes", ".cache"}
            foreign = sorted(p.name for p in self.root.iterdir() if p.name not in known)
            if foreign:
                raise FileExistsError(
                    f"{self.root}: does not look like a LeRobotDataset (contains {foreign[:5]}); "
                    "refusing to delete it"
                )
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ writing

    def add_episode(self, frames: dict[str, np.ndarray], task: str, extra: dict | None = None) -> int:
        """Append one episode (feature -> (T, *shape); videos uint8 (T, H, W, 3)); returns its index."""
        if self._finalized or self._closed:
            raise RuntimeError(f"{self.root}: writer is already finalized/closed")
        if not isinstance(task, str) or not task.strip():
            raise ValueError(f"task must be a non-empty string, got {task!r}")
        arrays, length = self._validate(frames)
        extra = self._validate_extra(extra or {})

        if self._frames_in_file and self._frames_in_file + length > self.data_file_max_frames:
            self._close_files()
            self._file += 1
            if self._file == DEFAULT_CHUNK_SIZE:
                self._chunk, self._file = self._chunk + 1, 0
            self._frames_in_file = 0

        episode_index = len(self._episode_rows)
        task_index = self._tasks.setdefault(task, len(self._tasks))
        start = self._total_frames
        bookkeeping = {
            "timestamp": (np.arange(length) / self.fps).astype(np.float32),
            "frame_index": np.arange(length, dtype=np.int64),
            "episode_index": np.full(length, episode_index, dtype=np.int64),
            "index": np.arange(start, start + length, dtype=np.int64),
            "task_index": np.full(length, task_index, dtype=np.int64),
        }
        columns = {**{k: arrays[k] for k in self._numeric_keys}, **bookkeeping}
        shapes = {k: ft["shape"] for k, ft in {**self.features, **INDEX_FEATURES}.items()}
        stored = [_to_arrow(columns[f.name], shapes[f.name]) for f in self._schema]
        table = pa.Table.from_arrays(stored, schema=self._schema)
        if self._pq_writer is None:
            path = self.root / DATA_PATH.format(chunk_index=self._chunk, file_index=self._file)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._pq_writer = pq.ParquetWriter(path, self._schema, compression="snappy")
        self._pq_writer.write_table(table)  # one row group per episode

        row: dict[str, Any] = {
            "episode_index": episode_index,
            "tasks": [task],
            "length": length,
            "data/chunk_index": self._chunk,
            "data/file_index": self._file,
            "dataset_from_index": start,
            "dataset_to_index": start + length,
        }
        for key in self.video_keys:
            video = self._video_file(key)
            from_ts = video.frames / self.fps
            video.write(arrays[key])
            row |= {
                f"videos/{key}/chunk_index": self._chunk,
                f"videos/{key}/file_index": self._file,
                f"videos/{key}/from_timestamp": from_ts,
                f"videos/{key}/to_timestamp": video.frames / self.fps,
            }
        stats = compute_stats({**arrays, **bookkeeping}, {**self.features, **INDEX_FEATURES})
        for key, ft_stats in stats.items():
            row |= {f"stats/{key}/{name}": value.tolist() for name, value in ft_stats.items()}
        row |= {"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
        row |= extra

        self._episode_rows.append(row)
        self._episode_stats.append(stats)
        self._total_frames += length
        self._frames_in_file += length
        return episode_index

    def _validate(self, frames: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        """Check every feature against its spec; returns arrays in the stored dtype and T."""
        if not isinstance(frames, Mapping):
            raise TypeError(f"frames must be a dict of feature -> array, got {type(frames).__name__}")
        missing = [k for k in self.features if k not in frames]
        unknown = [k for k in frames if k not in self.features]
        if missing or unknown:
            raise ValueError(f"episode features do not match: missing {missing}, unknown {unknown}")
        arrays: dict[str, np.ndarray] = {}
        length: int | None = None
        for key, ft in self.features.items():
            arr = np.asarray(frames[key])
            if arr.ndim == 0:
                raise ValueError(f"feature {key!r}: expected an array (T, *{ft['shape']}), got a scalar")
            if length is None:
                length = arr.shape[0]
            if arr.shape != (length, *ft["shape"]):
                expected = ", ".join(map(str, [length, *ft["shape"]]))
                raise ValueError(f"feature {key!r}: expected shape ({expected}), got {arr.shape}")
            if ft["dtype"] == "video":
                if arr.dtype != np.uint8:
                    raise ValueError(f"feature {key!r}: video frames must be uint8 (T, H, W, 3), got {arr.dtype}")
            else:
                target = np.dtype(ft["dtype"])
                if arr.dtype != target:
                    if not np.can_cast(arr.dtype, target, casting="same_kind"):
                        raise ValueError(f"feature {key!r}: dtype {arr.dtype} cannot be stored as {target}")
                    arr = arr.astype(target)
                if target.kind == "f" and not np.all(np.isfinite(arr)):
                    bad = int(np.argwhere(~np.isfinite(arr.reshape(length, -1)))[0, 0])
                    raise ValueError(f"feature {key!r}: contains NaN or infinite values (first at frame {bad})")
            arrays[key] = arr
        if not length:
            raise ValueError("episode has no frames")
        return arrays, length

    def _validate_extra(self, extra: Mapping[str, Any]) -> dict[str, Any]:
        out = {}
        for key, value in extra.items():
            if not isinstance(key, str) or key in _EPISODE_COLUMNS or key.startswith(_EPISODE_PREFIXES):
                raise ValueError(f"extra key {key!r} is reserved by the episodes metadata")
            if isinstance(value, np.generic):
                value = value.item()
            if not isinstance(value, (bool, int, float, str)) and value is not None:
                raise ValueError(f"extra {key!r}: value {value!r} must be a bool, int, float, str or None")
            if value is not None:
                kind = float if isinstance(value, (int, float)) and not isinstance(value, bool) else type(value)
                if self._extra_types.setdefault(key, kind) is not kind:
                    before = self._extra_types[key].__name__
                    raise ValueError(f"extra {key!r}: {type(value).__name__} value after {before} ones")
            out[key] = value
        return out

    def _video_file(self, key: str) -> _VideoFile:
        if key not in self._videos:
            height, width, _ = self.features[key]["shape"]
            path = self.root / VIDEO_PATH.format(video_key=key, chunk_index=self._chunk, file_index=self._file)
            self._videos[key] = _VideoFile(
                path, self.fps, height, width, self._video_codec, self._video_crf, self._video_gop
            )
        return self._videos[key]

    def _close_files(self) -> None:
        if self._pq_writer is not None:
            self._pq_writer.close()
            self._pq_writer = None
        for key, video in self._videos.items():
            video.close()
            self._video_info.setdefault(key, self._probe_video(video))
        self._videos = {}

    def _probe_video(self, video: _VideoFile) -> dict:
        """LeRobot's per-camera ``info`` block of info.json."""
        with av.open(str(video.path)) as container:
            stream = container.streams.video[0]
            codec = stream.codec_context.codec.canonical_name
            pix_fmt = stream.codec_context.pix_fmt or video.pix_fmt
            height, width = stream.codec_context.height, stream.codec_context.width
        return {
            "video.height": height,
            "video.width": width,
            "video.codec": codec,
            "video.pix_fmt": pix_fmt,
            "video.is_depth_map": False,
            "video.fps": self.fps,
            "video.channels": 3,
            "has_audio": False,
        }

    # ------------------------------------------------------------------ finishing

    def close(self) -> None:
        """Close open files without writing metadata (the folder stays unfinished)."""
        self._close_files()
        self._closed = True

    @contextmanager
    def removed_on_error(self, remove: bool = True) -> Iterator["LeRobotDatasetWriter"]:
        """On any exception inside the block, close the writer and (if ``remove``)
        delete the unfinished dataset folder, then re-raise. For converters whose
        output folder held nothing of the user's."""
        try:
            yield self
        except BaseException:
            self.close()
            if remove:
                shutil.rmtree(self.root, ignore_errors=True)
            raise

    def finalize(self) -> Path:
        """Close the data/video files and write meta/ (episodes, tasks, stats, then info.json)."""
        if self._finalized:
            return self.root
        if not self._episode_rows:
            raise ValueError(f"{self.root}: no episodes were added; nothing to finalize")
        self._close_files()
        self._closed = True

        columns = dict.fromkeys(k for row in self._episode_rows for k in row)  # extras may be absent in some rows
        episodes = pa.Table.from_pylist([{k: row.get(k) for k in columns} for row in self._episode_rows])
        episodes_path = self.root / EPISODES_PATH.format(chunk_index=0, file_index=0)
        atomic_write(episodes_path, lambda tmp: pq.write_table(episodes, tmp))
        tasks = sorted(self._tasks, key=self._tasks.__getitem__)
        atomic_write(self.root / TASKS_PATH, lambda tmp: pq.write_table(_tasks_table(tasks), tmp))
        atomic_write_json(self.root / STATS_PATH, _stats_to_json(aggregate_stats(self._episode_stats)))

        features = {**self.features, **INDEX_FEATURES}
        for key in self.video_keys:
            features[key] = {**features[key], "info": self._video_info[key]}
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self._episode_rows),
            "total_frames": self._total_frames,
            "total_tasks": len(self._tasks),
            "chunks_size": DEFAULT_CHUNK_SIZE,
            "data_files_size_in_mb": DEFAULT_DATA_FILE_SIZE_IN_MB,
            "video_files_size_in_mb": DEFAULT_VIDEO_FILE_SIZE_IN_MB,
            "fps": self.fps,
            "splits": {"train": f"0:{len(self._episode_rows)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.video_keys else None,
            "features": features,
        }
        # not atomic_write_json: its sort_keys would reorder features, and LeRobot reads camera order from it
        atomic_write_text(self.root / INFO_PATH, json.dumps(info, indent=4, ensure_ascii=False) + "\n")
        self._finalized = True
        return self.root

    def __enter__(self) -> "LeRobotDatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.close()
