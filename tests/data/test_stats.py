"""Quantile statistics (LeRobot 0.6.1 names, shapes, estimator and aggregation); old datasets without them."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mode_policy.data.reader import DatasetReader
from mode_policy.data.stats import (
    QUANTILE_BINS,
    QUANTILE_NAMES,
    QUANTILES,
    aggregate_stats,
    compute_stats,
    histogram_quantiles,
    image_sample_indices,
)
from mode_policy.data.writer import DatasetWriter

os.environ.setdefault("SVT_LOG", "1")

CAM = "observation.images.corner"
FEATURES = {
    "observation.state": {"dtype": "float32", "shape": [3], "names": None},
    "action": {"dtype": "float32", "shape": [2], "names": None},
    CAM: {"dtype": "video", "shape": [16, 16, 3], "names": ["height", "width", "channels"]},
}
STAT_ORDER = ["min", "max", "mean", "std", "count", *QUANTILE_NAMES]


def _bin_width(x: np.ndarray) -> np.ndarray:
    """The estimator's bound: one histogram bin of the column's range, (D,), plus float32
    rounding of the bin edges."""
    return (x.max(0) - x.min(0) + 2e-10) / QUANTILE_BINS * (1 + 1e-6) + 1e-7 * np.abs(x).max(0)


def _numpy_quantiles(x: np.ndarray) -> np.ndarray:
    """Sample quantiles (Q, D) of x (N, D), the inverse of the empirical CDF."""
    return np.quantile(x, QUANTILES, axis=0, method="inverted_cdf")


def test_quantile_names():
    assert QUANTILE_NAMES == ("q01", "q10", "q50", "q90", "q99")


@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(0).normal(size=(500, 4)),
        np.random.default_rng(1).integers(0, 5, size=(37, 3)).astype(float),  # heavy ties
        np.random.default_rng(2).exponential(size=(2, 2)),  # two samples
        np.full((20, 1), 0.3),  # constant
        np.full((20, 2), 0.3, dtype=np.float32),  # constant float32: min - 1e-10 == min
        np.random.default_rng(7).normal(size=(200, 3)).astype(np.float32),
        np.concatenate([np.zeros((99, 1)), np.ones((1, 1)) * 1e3]),  # one far outlier
    ],
)
def test_histogram_quantiles_within_one_bin_of_numpy(data):
    got = histogram_quantiles(data)
    assert got.shape == (len(QUANTILES), data.shape[1])
    err = np.abs(got - _numpy_quantiles(data))
    assert np.all(err <= _bin_width(data)), err.max()


def test_histogram_quantiles_are_monotone_and_inside_the_range():
    data = np.random.default_rng(3).standard_t(2, size=(300, 5))
    q = histogram_quantiles(data)
    assert np.all(np.diff(q, axis=0) >= 0)
    assert np.all(q >= data.min(0) - 1e-9) and np.all(q <= data.max(0) + 1e-9)


def test_compute_stats_names_shapes_and_single_frame_episode():
    rng = np.random.default_rng(4)
    frames = {
        "observation.state": rng.normal(size=(9, 3)).astype(np.float32),
        "action": rng.normal(size=(9, 2)).astype(np.float32),
        CAM: rng.integers(0, 256, size=(9, 16, 16, 3), dtype=np.uint8),
        "frame_index": np.arange(9),
    }
    stats = compute_stats(frames, {**FEATURES, "frame_index": {"dtype": "int64", "shape": [1]}})
    assert list(stats["action"]) == STAT_ORDER
    assert {k: v.shape for k, v in stats["observation.state"].items()} == {
        **{k: (3,) for k in STAT_ORDER},
        "count": (1,),
    }
    assert all(stats[CAM][k].shape == (3, 1, 1) for k in STAT_ORDER if k != "count")
    assert stats[CAM]["count"].tolist() == [9]
    assert stats["frame_index"]["q50"].shape == (1,)
    pixels = frames[CAM].reshape(-1, 3) / 255.0
    err = np.abs(stats[CAM]["q90"].reshape(3) - _numpy_quantiles(pixels)[3])
    assert np.all(err <= _bin_width(pixels))

    one = compute_stats({"action": frames["action"][:1]}, FEATURES)["action"]
    for name in QUANTILE_NAMES:  # a single frame: quantiles are the mean (as LeRobot)
        np.testing.assert_array_equal(one[name], one["mean"])


def test_image_sampling_follows_lerobot():
    assert len(image_sample_indices(40)) == 40
    assert len(image_sample_indices(300)) == 100
    assert len(image_sample_indices(500)) == int(500**0.75) == 105
    idx = image_sample_indices(500)
    assert idx[0] == 0 and idx[-1] == 499 and np.all(np.diff(idx) > 0)


def test_aggregated_quantiles_are_count_weighted_means():
    rng = np.random.default_rng(5)
    eps = [rng.normal(loc=i, size=(n, 2)) for i, n in enumerate([10, 40, 25])]
    feats = {"x": {"dtype": "float64", "shape": [2]}}
    per_ep = [compute_stats({"x": e}, feats) for e in eps]
    agg = aggregate_stats(per_ep)["x"]
    counts = np.array([len(e) for e in eps])[:, None]
    for qi, name in enumerate(QUANTILE_NAMES):
        expected = (np.stack([_numpy_quantiles(e)[qi] for e in eps]) * counts).sum(0) / counts.sum()
        bound = max(_bin_width(e).max() for e in eps)
        np.testing.assert_allclose(agg[name], expected, atol=bound, rtol=0)
        weighted = (np.stack([s["x"][name] for s in per_ep]) * counts).sum(0) / counts.sum()
        np.testing.assert_allclose(agg[name], weighted, rtol=1e-12)
    # A part without quantiles (an old dataset's stats) leaves them out of the aggregate.
    old = {"x": {k: v for k, v in per_ep[0]["x"].items() if k not in QUANTILE_NAMES}}
    assert not set(QUANTILE_NAMES) & set(aggregate_stats([old, per_ep[1]])["x"])


def _write(root, lengths=(12, 30)):
    rng = np.random.default_rng(6)
    with DatasetWriter(root, fps=10, features=FEATURES) as w:
        for i, n in enumerate(lengths):
            w.add_episode(
                {
                    "observation.state": rng.normal(size=(n, 3)).astype(np.float32),
                    "action": rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
                    CAM: rng.integers(0, 256, size=(n, 16, 16, 3), dtype=np.uint8),
                },
                task=f"task {i}",
            )
    return root


def test_writer_stores_quantiles_with_lerobot_column_types(tmp_path):
    root = _write(tmp_path / "ds")
    schema = pq.read_schema(next((root / "meta/episodes").rglob("*.parquet")))
    stat_cols = [n for n in schema.names if n.startswith("stats/")]
    assert stat_cols[:10] == [f"stats/observation.state/{s}" for s in STAT_ORDER]
    for key in ("observation.state", "action", CAM, "timestamp", "frame_index", "episode_index", "index"):
        for name in QUANTILE_NAMES:
            col = f"stats/{key}/{name}"
            depth = 3 if key == CAM else 1
            expected = pa.float64()
            for _ in range(depth):
                expected = pa.list_(expected)
            assert schema.field(col).type == expected, col
        assert schema.field(f"stats/{key}/count").type == pa.list_(pa.int64())
    stats = json.loads((root / "meta/stats.json").read_text())
    assert set(QUANTILE_NAMES) <= set(stats["action"]) and set(QUANTILE_NAMES) <= set(stats[CAM])
    assert np.asarray(stats[CAM]["q50"]).shape == (3, 1, 1)


def test_old_dataset_without_quantiles_still_loads(tmp_path):
    root = _write(tmp_path / "old")
    path = next((root / "meta/episodes").rglob("*.parquet"))
    table = pq.read_table(path)
    pq.write_table(table.drop([n for n in table.column_names if n.split("/")[-1] in QUANTILE_NAMES]), path)
    stats_path = root / "meta/stats.json"
    stats = json.loads(stats_path.read_text())
    stats_path.write_text(
        json.dumps({k: {s: v for s, v in ft.items() if s not in QUANTILE_NAMES} for k, ft in stats.items()})
    )
    ds = DatasetReader(root)
    assert ds.num_episodes == 2 and ds.episode(1)["action"].shape == (30, 2)
    assert set(ds.stats["action"]) == {"min", "max", "mean", "std", "count"}


def test_fresh_demos_dataset_holds_quantiles(tmp_path):
    pytest.importorskip("metaworld")
    from mode_policy.envs.metaworld_demos import generate_demos

    root = generate_demos(tmp_path / "demos", ["reach-v3", "button-press-topdown-v3"], 1, seed=0, progress=False)
    ds = DatasetReader(root)
    episodes = pq.read_table(next((root / "meta/episodes").rglob("*.parquet"))).to_pylist()
    for key in ("action", "observation.state"):
        assert set(QUANTILE_NAMES) <= set(ds.stats[key])
        column = ds.column(key).astype(np.float64)
        per_ep, counts, bound = [], [], 0.0
        for ep, (lo, hi) in zip(episodes, ds.episode_bounds):
            x = column[lo:hi]
            stored = np.array([ep[f"stats/{key}/{name}"] for name in QUANTILE_NAMES])  # (Q, D)
            assert np.all(np.abs(stored - _numpy_quantiles(x)) <= _bin_width(x))
            per_ep.append(_numpy_quantiles(x))
            counts.append(hi - lo)
            bound = max(bound, _bin_width(x).max())
        w = np.array(counts, dtype=float)[:, None, None]
        expected = (np.stack(per_ep) * w).sum(0) / w.sum()  # (Q, D)
        got = np.stack([ds.stats[key][name] for name in QUANTILE_NAMES])
        np.testing.assert_allclose(got, expected, atol=bound, rtol=0)
