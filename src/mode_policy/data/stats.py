"""Feature statistics of a LeRobotDataset: per episode, aggregated, and meta/stats.json.

Names, shapes and estimators follow LeRobot 0.6.1 (``lerobot/datasets/compute_stats.py``),
so that LeRobot can append episodes to our datasets and read them back:

- per episode and feature: ``min, max, mean, std, count, q01, q10, q50, q90, q99``;
- quantiles come from a 5000-bin histogram per dimension over the episode's
  ``[min - 1e-10, max + 1e-10]``, reading off where the cumulative count, linear inside
  the bin, reaches ``q * count`` (a target in the first bin gives that bin's left edge).
  Such a value lies in the same bin as the sample quantile
  ``np.quantile(x, q, method="inverted_cdf")``, so the two differ by at most one bin
  width, ``(max - min + 2e-10) / 5000``;
- the bin edges are computed in LeRobot's working dtype (float32 for float32, bool and small
  integer data), so values on an edge land in the same bin as in LeRobot;
- mean and std are exact (float64, two-pass). LeRobot's are float32 and one-pass
  (``E[x^2] - E[x]^2``), which is off by up to ~1e-3 on near-constant dimensions;
- episodes of one frame get ``q* = mean``;
- aggregated quantiles are the count-weighted mean of the episodes' quantiles (as LeRobot
  aggregates them; not the quantiles of the pooled frames), kept only when every episode has them;
- cameras: per-channel statistics of shape (3, 1, 1) in [0, 1], from evenly spaced frames
  (100 per episode, ``int(T ** 0.75)`` beyond 464 frames, at most 10,000); ``count`` is the
  number of frames used. Frames of 300 px or more are subsampled with a stride, as LeRobot does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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
"""``{feature: {"min", "max", "mean", "std", "count", "q01", ..., "q99"}: array}``."""

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_NAMES = tuple(f"q{round(q * 100):02d}" for q in QUANTILES)  # q01 q10 q50 q90 q99
QUANTILE_BINS = 5000
_EDGE_PAD = 1e-10  # histogram range padding beyond the episode's min and max
_STAT_NAMES = ("min", "max", "mean", "std", "count")
_IMAGE_MIN_SAMPLES, _IMAGE_MAX_SAMPLES, _IMAGE_SAMPLE_POWER = 100, 10_000, 0.75
_IMAGE_DOWNSAMPLE_FROM, _IMAGE_DOWNSAMPLE_TARGET = 300, 150  # px


def histogram_quantiles(data: np.ndarray) -> np.ndarray:
    """Quantiles ``QUANTILES`` of each column of ``data`` (N, D), N >= 1 -> (len(QUANTILES), D).

    The histogram estimator described in the module docstring. The bin edges are computed
    in the dtype of ``data`` (float32 for float32 features, as LeRobot does), so frames that
    sit exactly on an edge fall into the same bin as in LeRobot."""
    n, dims = data.shape
    targets = np.asarray(QUANTILES) * n  # (Q,)
    out = np.empty((len(QUANTILES), dims))
    for j in range(dims):
        col = data[:, j]
        edges = np.linspace(col.min() - _EDGE_PAD, col.max() + _EDGE_PAD, QUANTILE_BINS + 1)  # (bins + 1,)
        cum = np.cumsum(np.histogram(col, bins=edges)[0])  # (bins,)
        idx = np.minimum(np.searchsorted(cum, targets), QUANTILE_BINS - 1)  # first bin reaching the target
        before = np.where(idx > 0, cum[idx - 1], 0)
        in_bin = np.maximum(cum[idx] - before, 1)  # > 0 whenever idx > 0
        lower, upper = edges[idx].astype(np.float64), edges[idx + 1].astype(np.float64)
        value = lower + (targets - before) / in_bin * (upper - lower)
        out[:, j] = np.where(idx == 0, lower, value)
    return out


def _vector_stats(values: np.ndarray, shape: Sequence[int], count: int) -> dict[str, np.ndarray]:
    """min/max/mean/std/count/q* of ``values`` (N, D), each reshaped to ``shape`` (count: (1,)).

    Mean and std are exact (float64, two-pass); quantiles use LeRobot's working dtype
    (float32 for bool, integer up to 16 bits and float32 data; float64 otherwise)."""
    data = values.astype(np.float64)
    mean = data.mean(axis=0)
    stats = {
        "min": data.min(axis=0).reshape(shape),
        "max": data.max(axis=0).reshape(shape),
        "mean": mean.reshape(shape),
        "std": data.std(axis=0).reshape(shape),
        "count": np.array([count]),
    }
    if len(data) >= 2:
        quantiles = histogram_quantiles(values.astype(np.result_type(values.dtype, np.float32)))
    else:
        quantiles = np.broadcast_to(mean, (len(QUANTILES), len(mean)))
    for name, q in zip(QUANTILE_NAMES, quantiles):
        stats[name] = np.array(q).reshape(shape)
    return stats


def image_sample_indices(length: int) -> np.ndarray:
    """Evenly spaced frame indices used for a camera's episode statistics (LeRobot's rule)."""
    wanted = max(min(length, _IMAGE_MIN_SAMPLES), min(int(length**_IMAGE_SAMPLE_POWER), _IMAGE_MAX_SAMPLES))
    return np.round(np.linspace(0, length - 1, wanted)).astype(int)


def _image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel stats (3, 1, 1) in [0, 1] of uint8 frames (T, H, W, 3)."""
    pick = image_sample_indices(len(frames))
    images = frames[pick]  # (K, H, W, 3)
    height, width = images.shape[1:3]
    if max(height, width) >= _IMAGE_DOWNSAMPLE_FROM:
        step = int(max(height, width) / _IMAGE_DOWNSAMPLE_TARGET)
        images = images[:, ::step, ::step]
    pixels = images.reshape(-1, 3)  # (K * H * W, 3) uint8
    stats = _vector_stats(pixels, (3, 1, 1), len(pick))
    return {k: v if k == "count" else v / 255.0 for k, v in stats.items()}


def compute_stats(frames: Mapping[str, np.ndarray], features: Mapping[str, Mapping[str, Any]]) -> Stats:
    """Statistics of one episode: ``{feature: {min, max, mean, std, count, q01..q99}}``.

    Numeric features (T, *shape) give stats of shape ``shape``; video/image features
    (T, H, W, 3) uint8 give per-channel stats (3, 1, 1). Keys not in ``features``
    (or of string dtype) are skipped."""
    stats: Stats = {}
    for key, values in frames.items():
        ft = features.get(key)
        if ft is None:
            continue
        values = np.asarray(values)
        if ft.get("dtype") in ("video", "image"):
            stats[key] = _image_stats(values)
        elif numeric_dtype(ft) is not None:
            shape = [int(s) for s in ft["shape"]]
            data = values.reshape(len(values), -1)  # (T, prod(shape))
            stats[key] = _vector_stats(data, shape, len(data))
    return stats


def aggregate_stats(stats_list: Sequence[Mapping[str, Mapping[str, np.ndarray]]]) -> Stats:
    """Combine per-episode statistics: count-weighted mean, pooled std, global min/max,
    count-weighted mean of each quantile present in every part."""
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
        for name in QUANTILE_NAMES:
            if all(name in p for p in parts):
                values = np.stack([np.asarray(p[name], dtype=np.float64) for p in parts])  # (P, *shape)
                out[key][name] = (values * w).sum(axis=0) / total
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
