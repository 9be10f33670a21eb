"""Feature statistics of a LeRobotDataset: per episode, aggregated, and meta/stats.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .metadata import (
    LEGACY_EPISODES_STATS_PATH,
    LEGACY_VERSION,
    STATS_PATH,
    LeRobotFormatError,
    load_json,
    load_jsonl,
    numeric_dtype,
)

Stats = dict[str, dict[str, np.ndarray]]
"""``{feature: {"min", "max", "mean", "std", "count", ...}: array}``."""

_IMAGE_SAMPLES = 100  # frames per episode sampled for image statistics (as LeRobot)
_STAT_NAMES = ("min", "max", "mean", "std", "count")


def compute_stats(frames: Mapping[str, np.ndarray], features: Mapping[str, Mapping[str, Any]]) -> Stats:
    """LeRobot-style statistics of one episode: ``{feature: {min, max, mean, std, count}}``.

    Numeric features (T, *shape) give stats of shape ``shape``; video/image
    features (T, H, W, 3) uint8 give per-channel stats of shape (3, 1, 1) with
    values in [0, 1], from at most 100 evenly sampled frames (like LeRobot).
    Keys not in ``features`` (or of string dtype) are skipped."""
    stats: Stats = {}
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


def aggregate_stats(stats_list: Sequence[Mapping[str, Mapping[str, np.ndarray]]]) -> Stats:
    """Combine per-episode statistics (count-weighted mean, pooled std, global min/max)."""
    out: Stats = {}
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


def stats_to_json(stats: Mapping[str, Mapping[str, np.ndarray]]) -> dict:
    """Statistics as nested lists, the content of meta/stats.json."""
    return {k: {s: np.asarray(v).tolist() for s, v in ft.items()} for k, ft in stats.items()}


def stats_from_json(raw: Any, path: Path) -> Stats:
    """Parsed stats JSON -> arrays (at least 1-d); non-numeric or ragged entries are dropped."""
    if not isinstance(raw, dict):
        raise LeRobotFormatError(f"{path}: expected a JSON object of per-feature statistics")
    stats: Stats = {}
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


def load_stats(root: Path, version: str) -> Stats:
    """meta/stats.json; for v2.1 without it, the aggregate of meta/episodes_stats.jsonl; else {}."""
    path = root / STATS_PATH
    if path.is_file():
        return stats_from_json(load_json(path), path)
    legacy = root / LEGACY_EPISODES_STATS_PATH
    if version == LEGACY_VERSION and legacy.is_file():
        per_episode = [stats_from_json(r.get("stats", {}), legacy) for r in load_jsonl(legacy)]
        try:
            return aggregate_stats(per_episode)
        except ValueError as e:  # inconsistent shapes across episodes
            raise LeRobotFormatError(f"{legacy}: cannot aggregate episode statistics ({e})") from None
    return {}
