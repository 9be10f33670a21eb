"""Read a LeRobotDataset (v3.0 or v2.1) from local disk: columns, episodes, camera frames.

:class:`DatasetReader` reads whole columns and whole episodes; it is not LeRobot's
``LeRobotDataset`` (no per-frame ``__getitem__``, no ``delta_timestamps``): training
windows are built from its columns by :mod:`mode_policy.data.windows`.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import DataError, DataNotFoundError
from .metadata import (
    EPISODES_DIR,
    INDEX_FEATURES,
    LEGACY_VERSION,
    PICTURE_DTYPES,
    EpisodeRef,
    LeRobotFormatError,
    arrow_to_numpy,
    load_metadata,
    numeric_dtype,
    read_parquet,
    read_schema,
)
from .stats import load_stats
from .video import decode_video_segment


class DatasetReader:
    """Read-only view of a LeRobotDataset (v3.0 or v2.1) on local disk.

    Episodes are ordered by ``episode_index``; ``episode(i)`` and
    ``video_frames(key, i)`` take the position ``i`` in that order.
    """

    def __init__(self, root: str | Path) -> None:
        meta = load_metadata(root)
        self.root = meta.root
        self._info_path = meta.info_path
        self.info: dict = meta.info
        self.version: str = meta.version
        self.fps: int = meta.fps
        self.features: dict[str, dict] = meta.features
        self.video_keys: list[str] = meta.video_keys
        self.tasks: list[str] = meta.tasks
        self._episodes = meta.episodes
        self.stats: dict[str, dict[str, np.ndarray]] = load_stats(self.root, self.version)
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
            table = read_parquet(path, [key])
            yield arrow_to_numpy(table.column(key), shape, dtype, f"{path}: column {key!r}")

    def episode(self, i: int, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Frames of the episode at position ``i``: numeric features (T, *shape) (bookkeeping
        columns (T,)), video and image features decoded to uint8 (T, H, W, 3).
        ``keys`` defaults to every numeric, video and image feature."""
        ep = self._episode_ref(i)
        if keys is None:
            keys = [
                k for k, ft in self.features.items() if numeric_dtype(ft) is not None or ft["dtype"] in PICTURE_DTYPES
            ]
        unknown = [k for k in keys if k not in self.features and k not in INDEX_FEATURES]
        if unknown:
            raise DataError(f"{self.root}: unknown feature(s) {unknown}; features are {list(self.features)}")
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
                    out[key] = arrow_to_numpy(table.column(key), shape, dtype, where)
        for key in keys:
            if key in self.video_keys:
                out[key] = self.video_frames(key, i)
        return {k: out[k] for k in keys}

    def video_frames(self, key: str, episode: int) -> np.ndarray:
        """Decoded frames uint8 (T, H, W, 3) of video ``key`` for the episode at position ``episode``."""
        if key not in self.video_keys:
            raise DataError(f"{self.root}: {key!r} is not a video feature; video features are {self.video_keys}")
        ep = self._episode_ref(episode)
        ref = ep.videos.get(key)
        if ref is None or ref.path is None:
            raise LeRobotFormatError(
                f"{self.root / EPISODES_DIR}: episode {ep.episode_index} has no videos/{key}/... columns"
            )
        if "timestamp" in self._data_columns(ep.data_path):
            column = self._episode_table(ep, ["timestamp"]).column("timestamp")
            ts = arrow_to_numpy(column, None, np.dtype(np.float64), str(ep.data_path)).reshape(-1)  # (T,)
        else:
            ts = np.arange(ep.stop - ep.start) / self.fps
        return decode_video_segment(ref.path, ref.from_ts + ts, self.fps)

    def __len__(self) -> int:
        return self.num_frames

    def __repr__(self) -> str:
        return (
            f"DatasetReader({str(self.root)!r}, version={self.version}, episodes={self.num_episodes}, "
            f"frames={self.num_frames}, fps={self.fps}, features={list(self.features)})"
        )

    # ------------------------------------------------------------------ data access

    def _check_data_files(self) -> None:
        """Every data file exists, has a readable footer and holds the numeric feature columns."""
        required = [k for k, ft in self.features.items() if numeric_dtype(ft) is not None]
        for path in self._data_files:
            if not path.is_file():
                raise DataNotFoundError(f"{path}: data file not found (referenced by the episodes metadata)")
            names = set(self._data_columns(path))
            missing = [k for k in required if k not in names]
            if missing:
                raise LeRobotFormatError(f"{path}: missing column(s) {missing} declared in {self._info_path} features")

    def _episode_ref(self, i: int) -> EpisodeRef:
        if not -self.num_episodes <= i < self.num_episodes:
            raise IndexError(f"{self.root}: episode {i} out of range (dataset has {self.num_episodes})")
        return self._episodes[i]

    def _data_columns(self, path: Path) -> list[str]:
        if path not in self._columns:
            self._columns[path] = read_schema(path).names
        return self._columns[path]

    def _column_spec(self, key: str) -> tuple[list[int] | None, np.dtype | None]:
        """(shape, dtype) to convert a column to; shape None for the flat bookkeeping columns."""
        if key in INDEX_FEATURES:
            return None, np.dtype(INDEX_FEATURES[key]["dtype"])
        ft = self.features.get(key)
        if ft is None:
            raise DataError(f"{self.root}: unknown feature {key!r}; features are {list(self.features)}")
        dtype = numeric_dtype(ft)
        if dtype is None:
            raise LeRobotFormatError(
                f"{self._info_path}: feature {key!r} has dtype {ft['dtype']!r}, not numeric"
                + (" (use video_frames)" if ft["dtype"] == "video" else "")
            )
        return ft["shape"], dtype

    def _episode_table(self, ep: EpisodeRef, keys: Sequence[str]) -> pa.Table:
        """The rows of ``ep`` (columns ``keys``), from its data file; checks the frame count."""
        names = self._data_columns(ep.data_path)
        if self.version == LEGACY_VERSION:
            table = read_parquet(ep.data_path, keys)
        elif "index" in names:
            filters = (pc.field("index") >= ep.start) & (pc.field("index") < ep.stop)
            table = read_parquet(ep.data_path, keys, filters)
        else:
            table = read_parquet(ep.data_path, keys, pc.field("episode_index") == ep.episode_index)
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
