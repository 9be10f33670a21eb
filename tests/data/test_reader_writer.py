"""Dataset I/O: DatasetWriter -> DatasetReader round trip, hand-built LeRobot v3.0 / v2.1 fixtures, errors, inspect."""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mode_policy.data.inspect import format_inspection, inspect_dataset
from mode_policy.data.metadata import LeRobotFormatError
from mode_policy.data.reader import DatasetReader
from mode_policy.data.writer import DatasetWriter
from mode_policy.errors import ConfigError, DataError, DataNotFoundError

os.environ.setdefault("SVT_LOG", "1")  # keep SVT-AV1's banner out of the test output

FPS = 10
CAM = "observation.images.corner"
FEATURES = {
    "observation.state": {"dtype": "float32", "shape": [4], "names": None},
    "action": {"dtype": "float32", "shape": [2], "names": None},
    CAM: {"dtype": "video", "shape": [32, 32, 3], "names": ["height", "width", "channels"]},
}
LENGTHS = [7, 12, 20]
TASKS = ["pick up the cube", "open the drawer", "pick up the cube"]


def _images(length: int, size: int, shift: int) -> np.ndarray:
    """Smooth, moving colour gradients uint8 (T, size, size, 3) that a lossy codec keeps well."""
    t = np.arange(length)[:, None, None]
    yy, xx = np.mgrid[0:size, 0:size][:, None] * (128 // size)
    r = 40 + xx + 3 * t
    g = 40 + yy + 0 * t
    b = np.broadcast_to(60 + 20 * shift + 0 * xx, r.shape)
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def _episode(i: int, length: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    return {
        "observation.state": rng.normal(size=(length, 4)).astype(np.float32),
        "action": rng.uniform(-1, 1, size=(length, 2)),  # float64: the writer casts to float32
        CAM: _images(length, 32, i),
    }


def _encode(path: Path, frames: np.ndarray, codec: str) -> None:
    """Write uint8 (T, H, W, 3) frames to an mp4 directly with av (not through our writer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        options = {"g": "2", "crf": "30"} if codec == "libsvtav1" else {"g": "2", "crf": "10"}
        stream = container.add_stream(codec, rate=FPS, options=options)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for n, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = n, Fraction(1, FPS)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def _codec(preferred: str) -> str:
    for name in (preferred, "libx264", "mpeg4"):
        try:
            av.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001
            continue
    pytest.skip("no usable video encoder in this av build")


def _write(root: Path, max_frames: int = 100_000) -> list[dict[str, np.ndarray]]:
    episodes = [_episode(i, n) for i, n in enumerate(LENGTHS)]
    with DatasetWriter(root, FPS, FEATURES, robot_type="sawyer", data_file_max_frames=max_frames) as writer:
        for i, frames in enumerate(episodes):
            assert writer.add_episode(frames, TASKS[i], extra={"seed": 100 + i}) == i
    return episodes


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, list[dict[str, np.ndarray]]]:
    root = tmp_path_factory.mktemp("written") / "ds"
    return root, _write(root)


# --------------------------------------------------------------------------- our writer


def test_round_trip(written):
    root, episodes = written
    ds = DatasetReader(root)
    assert (ds.version, ds.fps, ds.num_episodes, ds.num_frames) == ("v3.0", FPS, 3, sum(LENGTHS))
    assert ds.tasks == ["pick up the cube", "open the drawer"]
    assert ds.episode_tasks == TASKS
    assert ds.episode_extra == [{"seed": 100}, {"seed": 101}, {"seed": 102}]
    assert ds.episode_bounds.tolist() == [[0, 7], [7, 19], [19, 39]]
    assert ds.video_keys == [CAM]

    state = ds.column("observation.state")
    assert state.shape == (39, 4) and state.dtype == np.float32
    np.testing.assert_array_equal(state, np.concatenate([e["observation.state"] for e in episodes]))
    np.testing.assert_array_equal(ds.column("index"), np.arange(39))
    np.testing.assert_array_equal(ds.column("task_index"), np.repeat([0, 1, 0], LENGTHS))
    for i, frames in enumerate(episodes):
        got = ds.episode(i)
        np.testing.assert_array_equal(got["observation.state"], frames["observation.state"])
        np.testing.assert_array_equal(got["action"], frames["action"].astype(np.float32))
        np.testing.assert_array_equal(got["frame_index"], np.arange(LENGTHS[i]))
        assert got[CAM].shape == frames[CAM].shape and got[CAM].dtype == np.uint8
        assert _mae(got[CAM], frames[CAM]) < 3.0
    only = ds.episode(1, keys=["action"])
    assert list(only) == ["action"]
    with pytest.raises(DataError, match="unknown feature.*'nope'"):
        ds.episode(1, keys=["nope"])


def test_layout_matches_lerobot(written):
    root, episodes = written
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 39, 2)
    assert info["splits"] == {"train": "0:3"} and info["robot_type"] == "sawyer"
    for key in ("chunks_size", "data_files_size_in_mb", "video_files_size_in_mb", "fps"):
        assert key in info
    assert list(info["features"]) == [*FEATURES, "timestamp", "frame_index", "episode_index", "index", "task_index"]
    assert info["features"][CAM]["info"]["video.height"] == 32

    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert pa.types.is_fixed_size_list(data.schema.field("observation.state").type)
    assert data.schema.field("timestamp").type == pa.float32()
    assert data.schema.field("index").type == pa.int64()
    assert (root / f"videos/{CAM}/chunk-000/file-000.mp4").is_file()

    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert tasks.column("task").to_pylist() == ["pick up the cube", "open the drawer"]
    assert tasks.column("task_index").to_pylist() == [0, 1]
    assert tasks.schema.pandas_metadata["index_columns"] == ["task"]

    eps = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert eps[1]["tasks"] == ["open the drawer"] and eps[1]["length"] == 12
    assert (eps[1]["dataset_from_index"], eps[1]["dataset_to_index"]) == (7, 19)
    assert eps[1][f"videos/{CAM}/from_timestamp"] == pytest.approx(0.7)
    assert eps[1][f"videos/{CAM}/to_timestamp"] == pytest.approx(1.9)
    assert eps[1]["stats/action/count"] == [12]

    stats = json.loads((root / "meta/stats.json").read_text())
    all_state = np.concatenate([e["observation.state"] for e in episodes]).astype(np.float64)
    np.testing.assert_allclose(stats["observation.state"]["mean"], all_state.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["observation.state"]["std"], all_state.std(0), rtol=1e-6)
    assert stats["observation.state"]["count"] == [39]
    assert np.asarray(stats[CAM]["mean"]).shape == (3, 1, 1)
    assert 0.0 <= np.min(stats[CAM]["min"]) and np.max(stats[CAM]["max"]) <= 1.0
    ds = DatasetReader(root)
    all_action = np.concatenate([e["action"] for e in episodes])
    np.testing.assert_allclose(ds.stats["action"]["max"], all_action.max(0), rtol=1e-6)


def test_several_data_and_video_files(tmp_path):
    root = tmp_path / "ds"
    episodes = _write(root, max_frames=15)  # 7 | 12 | 20 frames: one file each
    assert len(list((root / "data").glob("*/*.parquet"))) == 3
    assert len(list((root / "videos" / CAM).glob("*/*.mp4"))) == 3
    ds = DatasetReader(root)
    all_action = np.concatenate([e["action"] for e in episodes]).astype(np.float32)
    np.testing.assert_array_equal(ds.column("action"), all_action)
    assert ds.episode_bounds.tolist() == [[0, 7], [7, 19], [19, 39]]
    for i, frames in enumerate(episodes):
        got = ds.episode(i)
        np.testing.assert_array_equal(got["observation.state"], frames["observation.state"])
        assert _mae(got[CAM], frames[CAM]) < 3.0


def test_writer_validates_input(tmp_path):
    features = {k: v for k, v in FEATURES.items() if k != CAM}
    with pytest.raises(ConfigError, match="fps"):
        DatasetWriter(tmp_path / "ds", 0, features)
    writer = DatasetWriter(tmp_path / "ds", FPS, features)
    good = {k: v for k, v in _episode(0, 5).items() if k != CAM}
    with pytest.raises(DataError, match="observation.state"):
        writer.add_episode({**good, "observation.state": np.zeros((5, 3), np.float32)}, "t")
    with pytest.raises(DataError, match="action.*NaN"):
        writer.add_episode({**good, "action": np.full((5, 2), np.nan)}, "t")
    with pytest.raises(DataError, match="missing \\['action'\\]"):
        writer.add_episode({"observation.state": good["observation.state"]}, "t")
    with pytest.raises(DataError, match="action.*cannot be stored as float32"):
        writer.add_episode({**good, "action": np.zeros((5, 2), np.complex64)}, "t")
    with pytest.raises(DataError, match="task"):
        writer.add_episode(good, "")
    with pytest.raises(DataError, match="no episodes"):
        writer.finalize()
    assert writer.add_episode(good, "t") == 0
    writer.finalize()

    with pytest.raises(DataError, match="not empty; pass overwrite=True"):
        DatasetWriter(tmp_path / "ds", FPS, features)
    with DatasetWriter(tmp_path / "ds", FPS, features, overwrite=True) as w:
        w.add_episode(good, "again")
    assert DatasetReader(tmp_path / "ds").tasks == ["again"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="refusing"):
        DatasetWriter(tmp_path / "other", FPS, features, overwrite=True)

    video = DatasetWriter(tmp_path / "v", FPS, FEATURES)
    with pytest.raises(DataError, match=f"{CAM}.*uint8"):
        video.add_episode({**good, CAM: np.zeros((5, 32, 32, 3), np.float32)}, "t")
    video.close()

    with pytest.raises(RuntimeError, match="boom"):  # an exception inside `with` leaves no info.json
        with DatasetWriter(tmp_path / "crash", FPS, features) as w:
            w.add_episode(good, "t")
            raise RuntimeError("boom")
    with pytest.raises(DataNotFoundError, match="info.json"):
        DatasetReader(tmp_path / "crash")


# --------------------------------------------------------------------------- hand-built LeRobot layouts

V3_TASK_OF_EPISODE = ["pick up the cube", "open the drawer", "pick up the cube"]
V3_LENGTHS = [6, 9, 5]
TOP = "observation.images.top"


def _v3_frames(i: int, n: int, start: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(10 + i)
    return {
        "observation.state": rng.normal(size=(n, 3)).astype(np.float32),
        "action": rng.normal(size=(n, 2)).astype(np.float32),
        "next.reward": rng.uniform(size=n).astype(np.float32),
        "observation.environment_state": rng.normal(size=(n, 5)).astype(np.float32),
        "timestamp": (np.arange(n) / FPS).astype(np.float32),
        "frame_index": np.arange(n),
        "episode_index": np.full(n, i),
        "index": np.arange(start, start + n),
        "task_index": np.full(n, {"pick up the cube": 0, "open the drawer": 1}[V3_TASK_OF_EPISODE[i]]),
    }


def _v3_table(frames: list[dict[str, np.ndarray]]) -> pa.Table:
    """A data file the way HF datasets writes LeRobot frames (fixed-size lists, scalar columns)."""
    cat = {k: np.concatenate([f[k] for f in frames]) for k in frames[0]}
    columns = {
        "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(cat["observation.state"].reshape(-1)), 3),
        "action": pa.FixedSizeListArray.from_arrays(pa.array(cat["action"].reshape(-1)), 2),
        "next.reward": pa.array(cat["next.reward"]),
        # an older datasets version writes variable-length lists: must load too
        "observation.environment_state": pa.array(
            cat["observation.environment_state"].tolist(), pa.list_(pa.float32())
        ),
        **{k: pa.array(cat[k]) for k in ("timestamp", "frame_index", "episode_index", "index", "task_index")},
        "some_unknown_column": pa.array(["x"] * len(cat["index"])),
    }
    action = {"feature": {"dtype": "float32", "_type": "Value"}, "length": 2, "_type": "Sequence"}
    hf_meta = {"info": {"features": {"action": action}}}
    return pa.table(columns).replace_schema_metadata({b"huggingface": json.dumps(hf_meta).encode()})


def _pandas_tasks(index_field: str) -> pa.Table:
    """tasks.parquet as pandas writes DataFrame({"task_index"}, index=Index(tasks, name="task"))."""
    table = pa.table({"task_index": pa.array([1, 0], pa.int64()), index_field: ["open the drawer", "pick up the cube"]})

    def column(name, field_name, kind, np_type, meta=None):
        return {"name": name, "field_name": field_name, "pandas_type": kind, "numpy_type": np_type, "metadata": meta}

    index_name = index_field if index_field == "task" else None
    meta = {
        "index_columns": [index_field],
        "column_indexes": [column(None, None, "unicode", "object", {"encoding": "UTF-8"})],
        "columns": [
            column("task_index", "task_index", "int64", "int64"),
            column(index_name, index_field, "unicode", "object"),
        ],
        "creator": {"library": "pyarrow", "version": "21.0.0"},
        "pandas_version": "2.3.1",
    }
    return table.replace_schema_metadata({b"pandas": json.dumps(meta).encode()})


def _build_v3(root: Path, index_field: str = "task") -> tuple[list[dict], np.ndarray]:
    """A v3.0 dataset laid out by hand, as LeRobot writes it: data in two files, one shared AV1 mp4."""
    frames, start = [], 0
    for i, n in enumerate(V3_LENGTHS):
        frames.append(_v3_frames(i, n, start))
        start += n
    (root / "data/chunk-000").mkdir(parents=True)
    pq.write_table(_v3_table(frames[:2]), root / "data/chunk-000/file-000.parquet")
    pq.write_table(_v3_table(frames[2:]), root / "data/chunk-000/file-001.parquet")
    video = np.concatenate([_images(n, 64, i) for i, n in enumerate(V3_LENGTHS)])  # (20, 64, 64, 3)
    _encode(root / f"videos/{TOP}/chunk-000/file-000.mp4", video, _codec("libsvtav1"))

    rows, start = [], 0
    for i, n in enumerate(V3_LENGTHS):
        rows.append(
            {
                "episode_index": i,
                "data/chunk_index": 0,
                "data/file_index": 0 if i < 2 else 1,
                "dataset_from_index": start,
                "dataset_to_index": start + n,
                f"videos/{TOP}/chunk_index": 0,
                f"videos/{TOP}/file_index": 0,
                f"videos/{TOP}/from_timestamp": start / FPS,
                f"videos/{TOP}/to_timestamp": (start + n) / FPS,
                "tasks": [V3_TASK_OF_EPISODE[i]],
                "length": n,
                "stats/action/mean": frames[i]["action"].mean(0).tolist(),
                "stats/action/count": [n],
                "meta/episodes/chunk_index": 0,
                "meta/episodes/file_index": 0 if i < 2 else 1,
                "annotator": f"person-{i}",
            }
        )
        start += n
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows[:2]), root / "meta/episodes/chunk-000/file-000.parquet")
    pq.write_table(pa.Table.from_pylist(rows[2:]), root / "meta/episodes/chunk-000/file-001.parquet")
    pq.write_table(_pandas_tasks(index_field), root / "meta/tasks.parquet")

    scalar = {"dtype": "float32", "shape": [1], "names": None}
    info = {
        "codebase_version": "v3.0",
        "robot_type": "so100",
        "total_episodes": 3,
        "total_frames": 20,
        "total_tasks": 2,
        "chunks_size": 1000,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 500,
        "fps": FPS,
        "splits": {"train": "0:3"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": {
            "observation.state": {"dtype": "float32", "shape": [3], "names": ["x", "y", "z"]},
            "action": {"dtype": "float32", "shape": [2], "names": {"motors": ["a", "b"]}},
            "next.reward": scalar,
            "observation.environment_state": {"dtype": "float32", "shape": [5], "names": None},
            TOP: {
                "dtype": "video",
                "shape": [64, 64, 3],
                "names": ["height", "width", "channels"],
                "info": {
                    "video.height": 64,
                    "video.width": 64,
                    "video.codec": "av1",
                    "video.pix_fmt": "yuv420p",
                    "video.is_depth_map": False,
                    "video.fps": FPS,
                    "video.channels": 3,
                    "has_audio": False,
                },
            },
            "timestamp": scalar,
            "frame_index": {"dtype": "int64", "shape": [1], "names": None},
            "episode_index": {"dtype": "int64", "shape": [1], "names": None},
            "index": {"dtype": "int64", "shape": [1], "names": None},
            "task_index": {"dtype": "int64", "shape": [1], "names": None},
        },
        "some_future_key": {"anything": [1, 2]},
    }
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    stats = {
        "action": {
            "mean": [0.0, 0.0],
            "std": [1.0, 1.0],
            "min": [-3.0, -3.0],
            "max": [3.0, 3.0],
            "count": [20],
            "q01": [-2.0, -2.0],
            "q99": [2.0, 2.0],
        }
    }
    (root / "meta/stats.json").write_text(json.dumps(stats))
    return frames, video


def test_reads_handbuilt_v3(tmp_path):
    frames, video = _build_v3(tmp_path)
    ds = DatasetReader(tmp_path)
    assert ds.tasks == ["pick up the cube", "open the drawer"]
    assert ds.episode_tasks == V3_TASK_OF_EPISODE
    assert ds.episode_bounds.tolist() == [[0, 6], [6, 15], [15, 20]]
    assert ds.episode_extra == [{"annotator": "person-0"}, {"annotator": "person-1"}, {"annotator": "person-2"}]
    assert ds.video_keys == [TOP]
    np.testing.assert_array_equal(ds.stats["action"]["q99"], [2.0, 2.0])
    for key in ("observation.state", "action", "observation.environment_state"):
        np.testing.assert_array_equal(ds.column(key), np.concatenate([f[key] for f in frames]))
    assert ds.column("next.reward").shape == (20, 1)
    for i, f in enumerate(frames):
        got = ds.episode(i)
        np.testing.assert_array_equal(got["observation.state"], f["observation.state"])
        np.testing.assert_array_equal(got["task_index"], f["task_index"])
        start = sum(V3_LENGTHS[:i])
        assert got[TOP].shape == (V3_LENGTHS[i], 64, 64, 3)
        assert _mae(got[TOP], video[start : start + V3_LENGTHS[i]]) < 6.0
    # frames of episode 1 must not be those of its neighbours in the shared mp4
    assert _mae(ds.video_frames(TOP, 1), video[6:15]) < _mae(ds.video_frames(TOP, 1), video[5:14])


def test_reads_tasks_with_unnamed_pandas_index(tmp_path):
    _build_v3(tmp_path, index_field="__index_level_0__")
    assert DatasetReader(tmp_path).tasks == ["pick up the cube", "open the drawer"]


def test_reads_handbuilt_v21(tmp_path):
    lengths, cam = [5, 8], "observation.images.wrist"
    features = {
        "observation.state": {"dtype": "float32", "shape": [3], "names": None},
        "action": {"dtype": "float32", "shape": [2], "names": None},
        cam: {
            "dtype": "video",
            "shape": [32, 32, 3],
            "names": ["height", "width", "channel"],
            "video_info": {"video.fps": FPS},
        },
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        **{k: {"dtype": "int64", "shape": [1], "names": None} for k in ("frame_index", "episode_index", "index")},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    info = {
        "codebase_version": "v2.1",
        "robot_type": "aloha",
        "total_episodes": 2,
        "total_frames": 13,
        "total_tasks": 2,
        "total_videos": 2,
        "total_chunks": 1,
        "chunks_size": 1000,
        "fps": FPS,
        "splits": {"train": "0:2"},
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        "features": features,
    }
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta/info.json").write_text(json.dumps(info))
    tasks = [{"task_index": 0, "task": "fold"}, {"task_index": 1, "task": "stack"}]
    episodes = [
        {"episode_index": 0, "tasks": ["fold"], "length": 5},
        {"episode_index": 1, "tasks": ["stack"], "length": 8, "operator": "bo"},
    ]
    (tmp_path / "meta/tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    (tmp_path / "meta/episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in episodes))
    states, videos, start, stats_lines = [], [], 0, []
    for i, n in enumerate(lengths):
        rng = np.random.default_rng(i)
        state = rng.normal(size=(n, 3)).astype(np.float32)
        table = pa.table(
            {
                "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(state.reshape(-1)), 3),
                "action": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(2 * n, np.float32)), 2),
                "timestamp": pa.array((np.arange(n) / FPS).astype(np.float32)),
                "frame_index": pa.array(np.arange(n)),
                "episode_index": pa.array(np.full(n, i)),
                "index": pa.array(np.arange(start, start + n)),
                "task_index": pa.array(np.full(n, i)),
            }
        )
        (tmp_path / "data/chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, tmp_path / f"data/chunk-000/episode_{i:06d}.parquet")
        videos.append(_images(n, 32, i))
        _encode(tmp_path / f"videos/chunk-000/{cam}/episode_{i:06d}.mp4", videos[-1], _codec("libx264"))
        states.append(state)
        ep_stats = {
            "observation.state": {
                "min": state.min(0).tolist(),
                "max": state.max(0).tolist(),
                "mean": state.mean(0).tolist(),
                "std": state.std(0).tolist(),
                "count": [n],
            }
        }
        stats_lines.append(json.dumps({"episode_index": i, "stats": ep_stats}))
        start += n
    (tmp_path / "meta/episodes_stats.jsonl").write_text("\n".join(stats_lines) + "\n")

    ds = DatasetReader(tmp_path)
    assert (ds.version, ds.num_episodes, ds.num_frames) == ("v2.1", 2, 13)
    assert ds.tasks == ["fold", "stack"] and ds.episode_tasks == ["fold", "stack"]
    assert ds.episode_bounds.tolist() == [[0, 5], [5, 13]]
    assert ds.episode_extra == [{}, {"operator": "bo"}]
    np.testing.assert_array_equal(ds.column("observation.state"), np.concatenate(states))
    all_states = np.concatenate(states).astype(np.float64)
    np.testing.assert_allclose(ds.stats["observation.state"]["mean"], all_states.mean(0), rtol=1e-5)
    np.testing.assert_allclose(ds.stats["observation.state"]["std"], all_states.std(0), rtol=1e-4)
    for i in range(2):
        got = ds.episode(i)
        np.testing.assert_array_equal(got["observation.state"], states[i])
        assert _mae(got[cam], videos[i]) < 3.0


# --------------------------------------------------------------------------- errors


def test_missing_folder_and_info(tmp_path):
    with pytest.raises(DataNotFoundError, match="nowhere"):
        DatasetReader(tmp_path / "nowhere")
    with pytest.raises(DataNotFoundError, match="meta/info.json"):
        DatasetReader(tmp_path)


def test_unknown_version(tmp_path):
    _build_v3(tmp_path)
    info = json.loads((tmp_path / "meta/info.json").read_text())
    (tmp_path / "meta/info.json").write_text(json.dumps({**info, "codebase_version": "v1.6"}))
    with pytest.raises(LeRobotFormatError, match=r"info\.json.*'v1\.6'"):
        DatasetReader(tmp_path)


def test_truncated_parquet(tmp_path):
    _build_v3(tmp_path)
    path = tmp_path / "data/chunk-000/file-001.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(LeRobotFormatError, match=r"file-001\.parquet.*truncated"):
        DatasetReader(tmp_path)


def test_missing_feature_column(tmp_path):
    _build_v3(tmp_path)
    path = tmp_path / "data/chunk-000/file-000.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["action"]), path)
    with pytest.raises(LeRobotFormatError, match=r"file-000\.parquet.*missing column.*'action'"):
        DatasetReader(tmp_path)


def test_missing_tasks_and_episodes(tmp_path):
    _build_v3(tmp_path)
    (tmp_path / "meta/tasks.parquet").unlink()
    with pytest.raises(DataNotFoundError, match=r"meta/tasks\.parquet"):
        DatasetReader(tmp_path)


def test_corrupt_video(tmp_path):
    _build_v3(tmp_path)
    (tmp_path / f"videos/{TOP}/chunk-000/file-000.mp4").write_bytes(b"not a video")
    ds = DatasetReader(tmp_path)  # numeric data stays readable
    with pytest.raises(LeRobotFormatError, match=r"file-000\.mp4"):
        ds.video_frames(TOP, 0)


# --------------------------------------------------------------------------- inspect


def test_inspect(written):
    root, episodes = written
    d = inspect_dataset(root)
    assert (d["episodes"], d["frames"], d["fps"], d["version"]) == (3, 39, FPS, "v3.0")
    assert d["tasks"] == ["pick up the cube", "open the drawer"]
    assert d["features"] == {
        "observation.state": {"dtype": "float32", "shape": [4]},
        "action": {"dtype": "float32", "shape": [2]},
        CAM: {"dtype": "video", "shape": [32, 32, 3]},
    }
    assert set(d["stats"]) == {"observation.state", "action"}
    action = np.concatenate([e["action"] for e in episodes]).astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(d["stats"]["action"]["mean"], action.mean(0), rtol=1e-6)
    np.testing.assert_allclose(d["stats"]["action"]["min"], action.min(0))
    np.testing.assert_allclose(d["stats"]["action"]["max"], action.max(0))
    text = format_inspection(d)
    for needle in ("episodes: 3", "frames: 39", "observation.state", CAM, "open the drawer", "4"):
        assert needle in text
    json.dumps(d)  # plain JSON-serialisable values


def test_inspect_ignores_stats_json(tmp_path):
    _build_v3(tmp_path)  # its stats.json holds made-up numbers
    d = inspect_dataset(tmp_path)
    assert set(d["stats"]) == {"observation.state", "action", "next.reward", "observation.environment_state"}
    assert d["stats"]["action"]["max"] != [3.0, 3.0]
