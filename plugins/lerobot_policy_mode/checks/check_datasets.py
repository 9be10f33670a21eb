"""LeRobot 0.6.1 against our datasets: read every value, compare stats, append an episode with LeRobot.

Run inside the LeRobot venv (scripts/checks/check_lerobot.sh): ``python check_datasets.py DATASET [DATASET ...]``.
Prints one JSON line per dataset with the max abs differences and exits non-zero on a mismatch.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from lerobot.datasets.compute_stats import get_feature_stats
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from mode_policy.data.reader import DatasetReader
from mode_policy.data.stats import QUANTILE_NAMES

INDEX_KEYS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
STATS_TOLERANCE = 1e-5  # same estimators; LeRobot's float32 arithmetic vs our float64
STD_TOLERANCE = 5e-3  # LeRobot's float32 one-pass std (E[x^2] - E[x]^2) on near-constant dimensions


def _lerobot(root: Path) -> LeRobotDataset:
    return LeRobotDataset("local/" + root.name, root=root, return_uint8=True)


def _our_frames(ours: DatasetReader) -> dict[str, np.ndarray]:
    """Every frame of every feature from our reader, ordered by global index: (N, ...)."""
    out = {k: ours.column(k) for k, ft in ours.features.items() if ft["dtype"] not in ("video", "image")}
    for key in ours.video_keys:
        out[key] = np.concatenate([ours.video_frames(key, i) for i in range(ours.num_episodes)])
    return out


def compare_values(root: Path) -> dict[str, float]:
    """Max abs difference per feature between LeRobot's ``dataset[i]`` and our reader, over all frames."""
    ours, lr = DatasetReader(root), _lerobot(root)
    assert len(lr) == ours.num_frames, (len(lr), ours.num_frames)
    assert lr.meta.total_episodes == ours.num_episodes
    frames = _our_frames(ours)
    diff = {k: 0.0 for k in frames}
    for i in range(len(lr)):
        item = lr[i]
        assert item["task"] == ours.tasks[int(frames["task_index"][i])], i
        for key, values in frames.items():
            theirs = item[key].numpy()
            if key in ours.video_keys:
                theirs = theirs.transpose(1, 2, 0)  # (3, H, W) -> (H, W, 3)
            mine = values[i].reshape(theirs.shape)
            diff[key] = max(diff[key], float(np.abs(theirs.astype(np.float64) - mine.astype(np.float64)).max()))
    for i, (lo, hi) in enumerate(ours.episode_bounds):
        ep = lr.meta.episodes[i]
        assert (ep["dataset_from_index"], ep["dataset_to_index"]) == (lo, hi)
        assert ep["tasks"][0] == ours.episode_tasks[i]
    return diff


def compare_stats(root: Path) -> dict[str, float]:
    """Max abs difference of meta/stats.json as LeRobot loads it vs ours, and of our stored
    per-episode stats vs LeRobot's ``get_feature_stats`` on the same numeric frames."""
    ours, lr = DatasetReader(root), _lerobot(root)
    out: dict[str, float] = {}
    for key, stats in ours.stats.items():
        assert set(stats) == set(lr.meta.stats[key]), key
        assert set(QUANTILE_NAMES) <= set(stats), key
        out[f"stats.json/{key}"] = max(
            float(np.abs(np.asarray(lr.meta.stats[key][s]) - v).max()) for s, v in stats.items()
        )
    episodes = pq.read_table(sorted((root / "meta/episodes").rglob("*.parquet"))[0]).to_pylist()
    for key, ft in ours.features.items():
        if ft["dtype"] in ("video", "image") or key not in ours.stats:
            continue
        worst, worst_std = 0.0, 0.0
        column = ours.column(key)
        for ep, (lo, hi) in zip(episodes, ours.episode_bounds):
            data = column[lo:hi].reshape(hi - lo, -1)
            if data.dtype == bool:
                data = data.astype(np.float32)  # what LeRobot's writer hands numpy for a bool column
            theirs = get_feature_stats(data, axis=0, keepdims=data.ndim == 1)
            for s, v in theirs.items():
                err = float(np.abs(np.asarray(ep[f"stats/{key}/{s}"]).reshape(v.shape) - v).max())
                if s == "std":
                    worst_std = max(worst_std, err)
                else:
                    worst = max(worst, err)
        out[f"episode_stats/{key}"] = worst
        out[f"episode_stats/{key}/std"] = worst_std
    return out


def append_with_lerobot(root: Path, work: Path) -> dict[str, float]:
    """Copy ``root``, append a copy of its first episode with LeRobot's resume/add_frame/save_episode,
    reload in LeRobot and in our reader; returns max abs diffs of the appended episode."""
    target = work / (root.name + "_appended")
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(root, target)
    ours = DatasetReader(root)
    first = ours.episode(0)
    length = len(first["action"])
    task = ours.episode_tasks[0]
    ds = LeRobotDataset.resume("local/" + target.name, root=target)
    for t in range(length):
        frame = {k: first[k][t] for k, ft in ours.features.items() if k not in INDEX_KEYS}
        frame = {k: (v.reshape(ours.features[k]["shape"]) if k not in ours.video_keys else v) for k, v in frame.items()}
        ds.add_frame({**frame, "task": task})
    ds.save_episode()
    ds.finalize()

    lr, again = _lerobot(target), DatasetReader(target)
    assert again.num_episodes == ours.num_episodes + 1 and lr.meta.total_episodes == again.num_episodes
    assert len(lr) == again.num_frames == ours.num_frames + length
    assert again.episode_tasks[-1] == task
    assert set(QUANTILE_NAMES) <= set(again.stats["action"])
    last = again.episode(again.num_episodes - 1)
    lo = int(again.episode_bounds[-1, 0])
    out = {}
    for key, values in last.items():
        if key in ours.video_keys:
            theirs = np.stack([lr[lo + t][key].numpy().transpose(1, 2, 0) for t in range(length)])
            out[f"appended/{key} (LeRobot vs our reader, decoded)"] = float(
                np.abs(theirs.astype(np.int16) - values.astype(np.int16)).max()
            )
            out[f"appended/{key} (vs the frames added, lossy codec)"] = float(
                np.abs(first[key].astype(np.int16) - values.astype(np.int16)).max()
            )
        elif key in first and key not in INDEX_KEYS:
            theirs = np.stack([lr[lo + t][key].numpy().reshape(values[0].shape) for t in range(length)])
            out[f"appended/{key}"] = max(
                float(np.abs(values.astype(np.float64) - first[key].astype(np.float64)).max()),
                float(np.abs(theirs.astype(np.float64) - values.astype(np.float64)).max()),
            )
    return out


def main(argv: list[str]) -> int:
    work = Path(argv[0])
    failed = False
    for arg in argv[1:]:
        root = Path(arg)
        report = {
            "dataset": root.name,
            "values": compare_values(root),
            "stats": compare_stats(root),
            "append": append_with_lerobot(root, work),
        }
        print(json.dumps(report))
        bad = {k: v for k, v in report["values"].items() if v != 0.0}
        bad |= {
            k: v for k, v in report["stats"].items() if v > (STD_TOLERANCE if k.endswith("/std") else STATS_TOLERANCE)
        }
        bad |= {k: v for k, v in report["append"].items() if "lossy" not in k and v != 0.0}
        if bad:
            print(f"MISMATCH in {root}: {bad}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
