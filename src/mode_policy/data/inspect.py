"""Summarise a LeRobotDataset: size, features, tasks and statistics computed from the data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .metadata import INDEX_FEATURES, numeric_dtype
from .reader import DatasetReader

_MAX_VALUES = 4  # vector entries shown per statistic in the text table
_MAX_TASKS = 20


def inspect_dataset(root: str | Path) -> dict[str, Any]:
    """Describe the dataset at ``root``.

    Returns ``{"root", "version", "fps", "episodes", "frames", "features", "tasks", "stats"}``
    where ``features`` is ``{name: {"dtype", "shape"}}`` (the per-frame bookkeeping
    columns left out) and ``stats`` is ``{name: {"mean", "min", "max"}}`` (lists of
    the feature's shape) for numeric features, computed from the data files rather
    than read from meta/stats.json."""
    ds = DatasetReader(root)
    features = {
        name: {"dtype": str(ft["dtype"]), "shape": list(ft["shape"])}
        for name, ft in ds.features.items()
        if name not in INDEX_FEATURES
    }
    stats: dict[str, dict[str, list]] = {}
    for name, ft in ds.features.items():
        if name in INDEX_FEATURES or numeric_dtype(ft) is None:
            continue
        total, lo, hi, count = None, None, None, 0
        for part in ds.iter_column(name):  # (n, *shape), one data file at a time
            if len(part) == 0:
                continue
            part = part.astype(np.float64)
            total = part.sum(axis=0) if total is None else total + part.sum(axis=0)
            lo = part.min(axis=0) if lo is None else np.minimum(lo, part.min(axis=0))
            hi = part.max(axis=0) if hi is None else np.maximum(hi, part.max(axis=0))
            count += len(part)
        if count:
            stats[name] = {"mean": (total / count).tolist(), "min": lo.tolist(), "max": hi.tolist()}
    return {
        "root": str(ds.root),
        "version": ds.version,
        "fps": ds.fps,
        "episodes": ds.num_episodes,
        "frames": ds.num_frames,
        "features": features,
        "tasks": list(ds.tasks),
        "stats": stats,
    }


def _fmt_values(values: Any) -> str:
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    shown = ", ".join(f"{v:.4g}" for v in flat[:_MAX_VALUES])
    if flat.size == 1:
        return shown
    return f"[{shown}{', ...' if flat.size > _MAX_VALUES else ''}]"


def format_inspection(d: dict[str, Any]) -> str:
    """A readable multi-line text report of :func:`inspect_dataset`'s result."""
    lines = [
        f"LeRobotDataset {d.get('version', '?')} at {d.get('root', '?')}",
        f"  episodes: {d['episodes']}   frames: {d['frames']}   fps: {d.get('fps', '?')}",
        "",
        f"Tasks ({len(d['tasks'])}):",
    ]
    for i, task in enumerate(d["tasks"][:_MAX_TASKS]):
        lines.append(f"  [{i}] {task}")
    if len(d["tasks"]) > _MAX_TASKS:
        lines.append(f"  ... {len(d['tasks']) - _MAX_TASKS} more")

    rows = [("feature", "dtype", "shape", "mean", "min", "max")]
    for name, ft in d["features"].items():
        st = d["stats"].get(name)
        cells = (_fmt_values(st["mean"]), _fmt_values(st["min"]), _fmt_values(st["max"])) if st else ("-", "-", "-")
        rows.append((name, ft["dtype"], "x".join(map(str, ft["shape"])), *cells))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines += ["", "Features:"]
    for n, row in enumerate(rows):
        lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if n == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)
