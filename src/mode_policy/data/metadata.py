"""LeRobotDataset metadata: format versions, path templates, info.json, tasks and episodes.

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

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import DataError, DataNotFoundError

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
EPISODE_COLUMNS = {"episode_index", "tasks", "length", "dataset_from_index", "dataset_to_index"}
EPISODE_PREFIXES = ("data/", "videos/", "stats/", "meta/episodes/", "__index_level_")
_LEGACY_EPISODE_COLUMNS = {"episode_index", "tasks", "length"}

PICTURE_DTYPES = ("video", "image")  # feature dtypes decoded to uint8 (T, H, W, 3)


class LeRobotFormatError(DataError):
    """A dataset file is malformed, inconsistent or of an unsupported version."""


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


# --------------------------------------------------------------------------- json / parquet


def load_json(path: Path) -> Any:
    """The parsed JSON file ``path``."""
    if not path.is_file():
        raise DataNotFoundError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LeRobotFormatError(f"{path}: not valid JSON ({e})") from None


def load_jsonl(path: Path) -> list[dict]:
    """One JSON object per non-blank line of ``path``."""
    if not path.is_file():
        raise DataNotFoundError(f"{path}: file not found")
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


def read_schema(path: Path) -> pa.Schema:
    """The schema of the parquet file ``path`` (reads the footer only)."""
    if not path.is_file():
        raise DataNotFoundError(f"{path}: file not found")
    try:
        return pq.read_schema(path)
    except (pa.ArrowException, OSError) as e:
        raise LeRobotFormatError(f"{path}: unreadable parquet file, truncated or corrupt ({e})") from None


def read_parquet(path: Path, columns: Sequence[str] | None = None, filters: Any = None) -> pa.Table:
    """``columns`` (default all) of the rows of ``path`` that pass ``filters``."""
    if not path.is_file():
        raise DataNotFoundError(f"{path}: file not found")
    if columns is not None:
        missing = [c for c in columns if c not in read_schema(path).names]
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


def arrow_to_numpy(
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


# --------------------------------------------------------------------------- meta/ folder


@dataclass
class VideoRef:
    """Where one episode's frames of one camera lie: a file and a time span in it."""

    path: Path | None  # None when the episodes metadata lacks the segment
    from_ts: float = 0.0
    to_ts: float = 0.0


@dataclass
class EpisodeRef:
    """One episode as the metadata describes it."""

    episode_index: int
    start: int  # global frame index, inclusive
    stop: int  # exclusive
    data_path: Path
    tasks: list[str]
    videos: dict[str, VideoRef] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


@dataclass
class DatasetMetadata:
    """info.json, tasks and episodes of a dataset (v3.0 or v2.1); statistics: :mod:`.stats`."""

    root: Path
    info: dict
    version: str
    fps: int
    features: dict[str, dict]  # name -> {"dtype", "shape" (list of int), ...}
    tasks: list[str]  # the task of each task_index
    episodes: list[EpisodeRef]  # ordered by episode_index

    @property
    def info_path(self) -> Path:
        return self.root / INFO_PATH

    @property
    def video_keys(self) -> list[str]:
        return [k for k, ft in self.features.items() if ft["dtype"] == "video"]


def load_metadata(root: str | Path) -> DatasetMetadata:
    """Read and check ``root/meta``; raises :class:`LeRobotFormatError` naming the bad file."""
    root = Path(root)
    if not root.is_dir():
        raise DataNotFoundError(f"{root}: dataset folder not found")
    info_path = root / INFO_PATH
    if not info_path.is_file():
        raise DataNotFoundError(f"{info_path}: not found; {root} is not a LeRobotDataset")
    info = load_json(info_path)
    if not isinstance(info, dict):
        raise LeRobotFormatError(f"{info_path}: expected a JSON object")
    version = str(info.get("codebase_version"))
    if version not in SUPPORTED_VERSIONS:
        raise LeRobotFormatError(
            f"{info_path}: unsupported codebase_version {info.get('codebase_version')!r} "
            f"(supported: {', '.join(SUPPORTED_VERSIONS)})"
        )
    try:
        fps = int(round(float(info["fps"])))
    except (KeyError, TypeError, ValueError):
        fps = 0
    raw_features = info.get("features")
    if fps <= 0 or not isinstance(raw_features, dict):
        raise LeRobotFormatError(f"{info_path}: needs a positive 'fps' and a 'features' object")
    features: dict[str, dict] = {}
    for name, ft in raw_features.items():
        if not isinstance(ft, dict) or "dtype" not in ft:
            raise LeRobotFormatError(f"{info_path}: feature {name!r} lacks a dtype")
        features[name] = {**ft, "shape": [int(s) for s in ft.get("shape") or [1]]}
    meta = DatasetMetadata(root, info, version, fps, features, [], [])
    if version == CODEBASE_VERSION:
        meta.tasks = _load_tasks_v3(root)
        meta.episodes = _load_episodes_v3(meta)
    else:
        meta.tasks = _load_tasks_v21(root)
        meta.episodes = _load_episodes_v21(meta)
    return meta


def _fill(meta: DatasetMetadata, template_key: str, default: str, **kwargs: Any) -> Path:
    """The file named by the info.json path template ``template_key`` (else ``default``)."""
    template = meta.info.get(template_key) or default
    try:
        return meta.root / str(template).format(**kwargs)
    except (KeyError, IndexError, ValueError) as e:
        raise LeRobotFormatError(f"{meta.info_path}: {template_key} {template!r} cannot be filled ({e!r})") from None


def _load_tasks_v3(root: Path) -> list[str]:
    path = root / TASKS_PATH
    table = read_parquet(path)
    names = table.column_names
    task_col = "task" if "task" in names else None
    if task_col is None:  # pandas wrote the index under another name, e.g. __index_level_0__
        pandas_meta = table.schema.pandas_metadata or {}
        index_cols = [c for c in pandas_meta.get("index_columns", []) if isinstance(c, str) and c in names]
        types = {f.name: f.type for f in table.schema}
        string_cols = [c for c in names if pa.types.is_string(types[c]) or pa.types.is_large_string(types[c])]
        candidates = [c for c in index_cols if c in string_cols] or string_cols
        task_col = candidates[0] if candidates else None
    if task_col is None:
        raise LeRobotFormatError(f"{path}: no task string column (expected the index 'task')")
    tasks = table.column(task_col).to_pylist()
    indices = table.column("task_index").to_pylist() if "task_index" in names else list(range(len(tasks)))
    return _task_list(tasks, indices, path)


def _load_tasks_v21(root: Path) -> list[str]:
    path = root / LEGACY_TASKS_PATH
    rows = load_jsonl(path)
    try:
        return _task_list([r["task"] for r in rows], [r["task_index"] for r in rows], path)
    except KeyError as e:
        raise LeRobotFormatError(f"{path}: each line needs 'task_index' and 'task' (missing {e})") from None


def _task_list(tasks: list, indices: list, path: Path) -> list[str]:
    """Task strings ordered by task_index; every index from 0 up must have one."""
    if any(t is None for t in tasks) or any(i is None for i in indices):
        raise LeRobotFormatError(f"{path}: null task or task_index")
    out: list[str | None] = [None] * (max(indices, default=-1) + 1)
    for task, idx in zip(tasks, indices):
        out[int(idx)] = str(task)
    holes = [i for i, t in enumerate(out) if t is None]
    if holes:
        raise LeRobotFormatError(f"{path}: task_index values {holes[:5]} have no task")
    return out  # type: ignore[return-value]


def _load_episodes_v3(meta: DatasetMetadata) -> list[EpisodeRef]:
    folder = meta.root / EPISODES_DIR
    files = sorted(folder.glob("*/*.parquet"))
    if not files:
        raise DataNotFoundError(f"{folder}: no episodes parquet files (expected chunk-XXX/file-XXX.parquet)")
    rows: list[tuple[Path, dict]] = []
    for path in files:
        columns = [c for c in read_schema(path).names if not c.startswith("stats/")]
        rows += [(path, row) for row in read_parquet(path, columns).to_pylist()]
    rows.sort(key=lambda r: _need_int(r[1], "episode_index", r[0]))
    episodes: list[EpisodeRef] = []
    cursor = 0
    for path, row in rows:
        index = _need_int(row, "episode_index", path)
        if row.get("dataset_from_index") is not None and row.get("dataset_to_index") is not None:
            start, stop = _need_int(row, "dataset_from_index", path), _need_int(row, "dataset_to_index", path)
        else:
            start, stop = cursor, cursor + _need_int(row, "length", path)
        if row.get("length") is not None and stop - start != int(row["length"]):
            raise LeRobotFormatError(f"{path}: episode {index} has length {row['length']} but frames [{start}, {stop})")
        cursor = stop
        data_path = _fill(
            meta,
            "data_path",
            DATA_PATH,
            chunk_index=_need_int(row, "data/chunk_index", path),
            file_index=_need_int(row, "data/file_index", path),
        )
        videos = {}
        for key in meta.video_keys:
            cols = [f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
            if any(row.get(c) is None for c in cols):
                videos[key] = VideoRef(None)
                continue
            chunk, file = int(row[cols[0]]), int(row[cols[1]])
            vpath = _fill(meta, "video_path", VIDEO_PATH, video_key=key, chunk_index=chunk, file_index=file)
            videos[key] = VideoRef(vpath, float(row[cols[2]]), float(row[cols[3]]))
        extra = {k: v for k, v in row.items() if k not in EPISODE_COLUMNS and not k.startswith(EPISODE_PREFIXES)}
        tasks = _task_strings(row.get("tasks"))
        episodes.append(EpisodeRef(index, start, stop, data_path, tasks, videos, extra))
    _check_unique(episodes, folder)
    return episodes


def _load_episodes_v21(meta: DatasetMetadata) -> list[EpisodeRef]:
    path = meta.root / LEGACY_EPISODES_PATH
    rows = sorted(load_jsonl(path), key=lambda r: _need_int(r, "episode_index", path))
    chunks_size = int(meta.info.get("chunks_size") or DEFAULT_CHUNK_SIZE)
    episodes: list[EpisodeRef] = []
    cursor = 0
    for row in rows:
        index = _need_int(row, "episode_index", path)
        length = _need_int(row, "length", path)
        chunk = index // chunks_size
        data_path = _fill(meta, "data_path", LEGACY_DATA_PATH, episode_chunk=chunk, episode_index=index)
        videos = {}
        for key in meta.video_keys:
            vpath = _fill(
                meta, "video_path", LEGACY_VIDEO_PATH, episode_chunk=chunk, video_key=key, episode_index=index
            )
            videos[key] = VideoRef(vpath, 0.0, length / meta.fps)
        extra = {k: v for k, v in row.items() if k not in _LEGACY_EPISODE_COLUMNS}
        tasks = _task_strings(row.get("tasks"))
        episodes.append(EpisodeRef(index, cursor, cursor + length, data_path, tasks, videos, extra))
        cursor += length
    _check_unique(episodes, path)
    return episodes


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


def _check_unique(episodes: list[EpisodeRef], where: Path) -> None:
    indices = [ep.episode_index for ep in episodes]
    if len(set(indices)) != len(indices):
        dup = sorted({i for i in indices if indices.count(i) > 1})
        raise LeRobotFormatError(f"{where}: episode_index {dup[:5]} listed more than once")


def tasks_table(tasks: Sequence[str]) -> pa.Table:
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
