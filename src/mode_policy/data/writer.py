"""Write a new LeRobotDataset v3.0 folder, episode by episode (see :mod:`.metadata` for the layout)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConfigError, DataError
from ..fileio import atomic_write, atomic_write_json, atomic_write_text
from .metadata import (
    CODEBASE_VERSION,
    DATA_PATH,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_DATA_FILE_SIZE_IN_MB,
    DEFAULT_VIDEO_FILE_SIZE_IN_MB,
    EPISODE_COLUMNS,
    EPISODE_PREFIXES,
    EPISODES_PATH,
    INDEX_FEATURES,
    INFO_PATH,
    STATS_PATH,
    TASKS_PATH,
    VIDEO_PATH,
    numeric_dtype,
    tasks_table,
)
from .stats import aggregate_stats, compute_stats, stats_to_json
from .video import VideoEncoder, pick_video_codec


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


class DatasetWriter:
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
            raise ConfigError(f"fps must be a positive integer, got {fps!r}")
        if data_file_max_frames < 1:
            raise ConfigError(f"data_file_max_frames must be >= 1, got {data_file_max_frames}")
        self.root = Path(root)
        self.fps = int(fps)
        self.robot_type = robot_type
        self.data_file_max_frames = int(data_file_max_frames)
        self.features = self._normalise_features(features, video_keys)
        self.video_keys = [k for k, ft in self.features.items() if ft["dtype"] == "video"]
        self._numeric_keys = [k for k in self.features if k not in self.video_keys]
        self._video_codec = video_codec or (pick_video_codec() if self.video_keys else "")
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
        self._videos: dict[str, VideoEncoder] = {}
        self._video_info: dict[str, dict] = {}
        self._finalized = False
        self._closed = False

    # ------------------------------------------------------------------ setup

    @staticmethod
    def _normalise_features(features: Mapping[str, Mapping[str, Any]], video_keys: Sequence[str]) -> dict[str, dict]:
        if not features:
            raise DataError("features is empty")
        unknown = [k for k in video_keys if k not in features]
        if unknown:
            raise DataError(f"video_keys {unknown} are not in features")
        out: dict[str, dict] = {}
        for name, ft in features.items():
            if "/" in name:
                raise DataError(f"feature {name!r}: names may not contain '/'")
            if name in INDEX_FEATURES:
                raise DataError(f"feature {name!r}: reserved for the frame bookkeeping columns")
            try:
                shape = [int(s) for s in ft["shape"]]
                dtype = ft["dtype"]
            except (KeyError, TypeError, ValueError):
                raise DataError(f"feature {name!r}: needs 'dtype' and an integer 'shape'") from None
            if not shape or any(s <= 0 for s in shape):
                raise DataError(f"feature {name!r}: shape {shape} must be non-empty and positive")
            if name in video_keys or dtype == "video":
                if len(shape) != 3 or shape[2] != 3:
                    raise DataError(f"feature {name!r}: video shape must be [height, width, 3], got {shape}")
                names = ft.get("names") or ["height", "width", "channels"]
                out[name] = {"dtype": "video", "shape": shape, "names": names}
            elif numeric_dtype({"dtype": dtype}) is None:
                raise DataError(f"feature {name!r}: dtype {dtype!r} is not supported (numeric dtypes or 'video')")
            else:
                out[name] = {"dtype": str(np.dtype(dtype)), "shape": shape, "names": ft.get("names")}
        return out

    def _prepare_root(self, overwrite: bool) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise DataError(f"{self.root}: exists and is not a folder")
        if self.root.is_dir() and any(self.root.iterdir()):
            if not overwrite:
                raise DataError(f"{self.root}: folder exists and is not empty; pass overwrite=True to replace it")
            known = {"meta", "data", "videos", "images", "README.md", ".gitattributes", ".cache"}
            foreign = sorted(p.name for p in self.root.iterdir() if p.name not in known)
            if foreign:
                raise DataError(
                    f"{self.root}: does not look like a LeRobotDataset (contains {foreign[:5]}); refusing to delete it"
                )
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ writing

    def add_episode(self, frames: dict[str, np.ndarray], task: str, extra: dict | None = None) -> int:
        """Append one episode (feature -> (T, *shape); videos uint8 (T, H, W, 3)); returns its index."""
        if self._finalized or self._closed:
            raise RuntimeError(f"{self.root}: writer is already finalized/closed")
        if not isinstance(task, str) or not task.strip():
            raise DataError(f"task must be a non-empty string, got {task!r}")
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
            raise DataError(f"episode features do not match: missing {missing}, unknown {unknown}")
        arrays: dict[str, np.ndarray] = {}
        length: int | None = None
        for key, ft in self.features.items():
            arr = np.asarray(frames[key])
            if arr.ndim == 0:
                raise DataError(f"feature {key!r}: expected an array (T, *{ft['shape']}), got a scalar")
            if length is None:
                length = arr.shape[0]
            if arr.shape != (length, *ft["shape"]):
                expected = ", ".join(map(str, [length, *ft["shape"]]))
                raise DataError(f"feature {key!r}: expected shape ({expected}), got {arr.shape}")
            if ft["dtype"] == "video":
                if arr.dtype != np.uint8:
                    raise DataError(f"feature {key!r}: video frames must be uint8 (T, H, W, 3), got {arr.dtype}")
            else:
                target = np.dtype(ft["dtype"])
                if arr.dtype != target:
                    if not np.can_cast(arr.dtype, target, casting="same_kind"):
                        raise DataError(f"feature {key!r}: dtype {arr.dtype} cannot be stored as {target}")
                    arr = arr.astype(target)
                if target.kind == "f" and not np.all(np.isfinite(arr)):
                    bad = int(np.argwhere(~np.isfinite(arr.reshape(length, -1)))[0, 0])
                    raise DataError(f"feature {key!r}: contains NaN or infinite values (first at frame {bad})")
            arrays[key] = arr
        if not length:
            raise DataError("episode has no frames")
        return arrays, length

    def _validate_extra(self, extra: Mapping[str, Any]) -> dict[str, Any]:
        out = {}
        for key, value in extra.items():
            if not isinstance(key, str) or key in EPISODE_COLUMNS or key.startswith(EPISODE_PREFIXES):
                raise DataError(f"extra key {key!r} is reserved by the episodes metadata")
            if isinstance(value, np.generic):
                value = value.item()
            if not isinstance(value, (bool, int, float, str)) and value is not None:
                raise DataError(f"extra {key!r}: value {value!r} must be a bool, int, float, str or None")
            if value is not None:
                kind = float if isinstance(value, (int, float)) and not isinstance(value, bool) else type(value)
                if self._extra_types.setdefault(key, kind) is not kind:
                    before = self._extra_types[key].__name__
                    raise DataError(f"extra {key!r}: {type(value).__name__} value after {before} ones")
            out[key] = value
        return out

    def _video_file(self, key: str) -> VideoEncoder:
        if key not in self._videos:
            height, width, _ = self.features[key]["shape"]
            path = self.root / VIDEO_PATH.format(video_key=key, chunk_index=self._chunk, file_index=self._file)
            self._videos[key] = VideoEncoder(
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

    def _probe_video(self, video: VideoEncoder) -> dict:
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
    def removed_on_error(self, remove: bool = True) -> Iterator[DatasetWriter]:
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
            raise DataError(f"{self.root}: no episodes were added; nothing to finalize")
        self._close_files()
        self._closed = True

        columns = dict.fromkeys(k for row in self._episode_rows for k in row)  # extras may be absent in some rows
        episodes = pa.Table.from_pylist([{k: row.get(k) for k in columns} for row in self._episode_rows])
        episodes_path = self.root / EPISODES_PATH.format(chunk_index=0, file_index=0)
        atomic_write(episodes_path, lambda tmp: pq.write_table(episodes, tmp))
        tasks = sorted(self._tasks, key=self._tasks.__getitem__)
        atomic_write(self.root / TASKS_PATH, lambda tmp: pq.write_table(tasks_table(tasks), tmp))
        atomic_write_json(self.root / STATS_PATH, stats_to_json(aggregate_stats(self._episode_stats)))

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

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.close()
