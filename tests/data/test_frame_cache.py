"""The on-disk frame cache: built once and reused, rebuilt when the dataset or the image size
changes, resumed after a kill, damage detected, unwritable or full cache folders refused
clearly, and batches identical to the in-memory path."""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from mode_policy.bench.data import bench_data, format_data, measure, write_synthetic_dataset
from mode_policy.data import frame_cache
from mode_policy.data.frame_cache import (
    DiskFrames,
    cache_entry,
    cached_camera,
    dataset_fingerprint,
)
from mode_policy.data.reader import DatasetReader
from mode_policy.data.windows import WindowSampler, load_episodes
from mode_policy.errors import ConfigError, DataError
from mode_policy.training.config import TrainConfig

CAMS = ["observation.images.corner", "observation.images.gripperPOV"]
LENGTH, EPISODES, SIZE = 12, 3, 16
FRAME_BYTES = SIZE * SIZE * 3


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("fc") / "ds", EPISODES, LENGTH, image_size=SIZE)


@pytest.fixture
def dataset(source, tmp_path) -> Path:
    """A private copy (tests change it)."""
    return Path(shutil.copytree(source, tmp_path / "ds"))


@pytest.fixture
def decodes(monkeypatch) -> list[tuple[str, int]]:
    """(camera, episode) of every episode decoded from the dataset."""
    calls: list[tuple[str, int]] = []
    real = frame_cache.episode_frames

    def counting(ds, key, i, size=None):
        calls.append((key, i))
        return real(ds, key, i, size)

    monkeypatch.setattr(frame_cache, "episode_frames", counting)
    return calls


def _cached(dataset: Path, cache: Path, budget: float | None = 0.001, **kw):
    return load_episodes(dataset, CAMS, progress=False, cache_dir=cache, memory_budget_mb=budget, **kw)


def _entry(dataset: Path, cache: Path, key: str = CAMS[0], size=None):
    return cache_entry(DatasetReader(dataset), key, size, cache)


def _frames(data) -> dict[str, torch.Tensor]:
    return {k: v[:] for k, v in data.images.items()}


def test_bounded_batches_equal_the_in_memory_batches(dataset, tmp_path):
    memory = load_episodes(dataset, CAMS, progress=False)
    frames = torch.tensor([0, 1, 5, LENGTH - 1, LENGTH, LENGTH + 1, 2 * LENGTH + 3, 3 * LENGTH - 1])
    expected = WindowSampler(memory, n_obs_steps=3, horizon=4).batch(frames)
    one_camera = EPISODES * LENGTH * FRAME_BYTES / 2**20 * 1.5
    for budget, on_disk in ((None, []), (0.001, CAMS), (one_camera, CAMS[1:])):
        data = _cached(dataset, tmp_path / "cache", budget)
        assert sorted(k for k, v in data.images.items() if isinstance(v, DiskFrames)) == on_disk
        assert all(data.images[k].shape == memory.images[k].shape for k in CAMS)
        batch = WindowSampler(data, n_obs_steps=3, horizon=4).batch(frames)
        for key in CAMS:
            assert batch[key].dtype == torch.uint8 and batch[key].shape == (8, 3, SIZE, SIZE, 3)
            torch.testing.assert_close(batch[key], expected[key], rtol=0, atol=0)
        torch.testing.assert_close(batch["observation.state"], expected["observation.state"])
    disk = _cached(dataset, tmp_path / "cache").images[CAMS[0]]
    image = memory.images[CAMS[0]]
    assert torch.equal(disk[3:9], image[3:9]) and torch.equal(disk[-1], image[-1])
    assert torch.equal(disk[np.array([[4, 2], [7, 7]])], image[torch.tensor([[4, 2], [7, 7]])])
    assert torch.equal(pickle.loads(pickle.dumps(disk))[[1, 0]], image[[1, 0]])  # worker processes
    with pytest.raises(IndexError, match="out of range"):
        disk[torch.tensor([EPISODES * LENGTH])]


def test_resized_cache_equals_resized_memory_and_keeps_other_sizes(dataset, tmp_path, decodes):
    memory = load_episodes(dataset, CAMS, progress=False, image_size=8)
    decodes.clear()
    data = _cached(dataset, tmp_path / "cache", image_size=8)
    assert data.images[CAMS[0]].shape == (EPISODES * LENGTH, 8, 8, 3)
    for key in CAMS:
        assert torch.equal(data.images[key][:], memory.images[key])
    assert len(decodes) == 2 * EPISODES
    _cached(dataset, tmp_path / "cache")  # another size: a second entry, decoded once more
    assert len(decodes) == 4 * EPISODES
    _cached(dataset, tmp_path / "cache", image_size=8)
    _cached(dataset, tmp_path / "cache")
    assert len(decodes) == 4 * EPISODES  # both sizes reused


def test_cache_is_built_once_and_reused(dataset, tmp_path, decodes):
    first = _frames(_cached(dataset, tmp_path / "cache"))
    assert sorted(decodes) == sorted((k, i) for k in CAMS for i in range(EPISODES))
    manifest = _entry(dataset, tmp_path / "cache").folder / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    decodes.clear()
    again = _frames(_cached(dataset, tmp_path / "cache", budget=None))  # in memory from the cache
    assert decodes == [] and manifest.stat().st_mtime_ns == stamp
    assert all(torch.equal(first[k], again[k]) for k in CAMS)
    assert json.loads(manifest.read_text())["fingerprint"] == dataset_fingerprint(dataset)


def test_state_only_loads_never_touch_the_cache(dataset, tmp_path):
    data = load_episodes(dataset, progress=False, cache_dir=tmp_path / "cache", memory_budget_mb=1)
    assert data.images == {} and not (tmp_path / "cache").exists()


def test_cache_is_rebuilt_when_the_dataset_changes(dataset, tmp_path, decodes):
    _cached(dataset, tmp_path / "cache")
    old = _entry(dataset, tmp_path / "cache").fingerprint
    decodes.clear()
    write_synthetic_dataset(dataset, EPISODES - 1, LENGTH + 2, image_size=SIZE, seed=5)  # same path, new content
    data = _cached(dataset, tmp_path / "cache")
    assert len(decodes) == 2 * (EPISODES - 1) and _entry(dataset, tmp_path / "cache").fingerprint != old
    memory = load_episodes(dataset, CAMS, progress=False)
    assert all(torch.equal(data.images[k][:], memory.images[k]) for k in CAMS)
    decodes.clear()
    video = next((dataset / "videos").rglob("*.mp4"))
    os.utime(video, ns=(video.stat().st_atime_ns, video.stat().st_mtime_ns + 10**9))  # touched: rebuilt
    _cached(dataset, tmp_path / "cache")
    assert len(decodes) == 2 * (EPISODES - 1)


def test_killed_build_resumes_and_garbage_restarts(dataset, tmp_path, monkeypatch, decodes):
    memory = load_episodes(dataset, CAMS, progress=False)
    real = frame_cache.episode_frames
    monkeypatch.setattr(frame_cache, "_SAVE_PROGRESS_S", -1.0)  # record progress after every episode

    def killed_at_episode_2(ds, key, i, size=None):
        if i == 2:
            raise KeyboardInterrupt  # like a kill: no cleanup of the build folder
        return real(ds, key, i, size)

    monkeypatch.setattr(frame_cache, "episode_frames", killed_at_episode_2)
    with pytest.raises(KeyboardInterrupt):
        _cached(dataset, tmp_path / "cache")
    entry = _entry(dataset, tmp_path / "cache")
    assert not entry.folder.exists()  # never half-valid
    assert json.loads((entry.build / "progress.json").read_text())["episodes_done"] == 2
    monkeypatch.setattr(frame_cache, "episode_frames", real)  # the counting decoder of the fixture
    decodes.clear()
    data = _cached(dataset, tmp_path / "cache")
    assert decodes == [(CAMS[0], 2)] + [(CAMS[1], i) for i in range(EPISODES)]  # resumed at episode 2
    assert all(torch.equal(data.images[k][:], memory.images[k]) for k in CAMS)
    assert not entry.build.exists()

    shutil.rmtree(entry.folder)  # a build killed before its first progress record: partial garbage
    entry.build.mkdir()
    (entry.build / "frames.u8").write_bytes(b"\xff" * 100)
    (entry.build / "progress.json").write_text('{"episodes_done": 2, "identity": {"camera": "other"}}')
    decodes.clear()
    data = _cached(dataset, tmp_path / "cache")
    assert [i for k, i in decodes if k == CAMS[0]] == list(range(EPISODES))  # started afresh
    assert torch.equal(data.images[CAMS[0]][:], memory.images[CAMS[0]])


@pytest.mark.parametrize("damage", ["truncated", "manifest", "no_frames"])
def test_corrupt_cache_is_rebuilt_naming_the_file(dataset, tmp_path, damage, caplog, decodes):
    memory = load_episodes(dataset, CAMS, progress=False)
    _cached(dataset, tmp_path / "cache")
    entry = _entry(dataset, tmp_path / "cache")
    if damage == "truncated":
        os.truncate(entry.frames, entry.total_bytes - 1)
        named = "frames.u8"
    elif damage == "manifest":
        (entry.folder / "manifest.json").write_text('{"format": 1, "camera"')
        named = "manifest.json"
    else:
        entry.frames.unlink()
        named = "frames.u8"
    decodes.clear()
    with caplog.at_level(logging.WARNING, logger="mode_policy.data.frame_cache"):
        data = _cached(dataset, tmp_path / "cache")
    assert named in caplog.text and "rebuilding" in caplog.text
    assert decodes == [(CAMS[0], i) for i in range(EPISODES)]
    assert torch.equal(data.images[CAMS[0]][:], memory.images[CAMS[0]])


def _read_only(monkeypatch, folder: Path) -> None:
    """Make ``folder`` and everything under it look read-only (the tests run as root, which chmod cannot stop)."""
    real = os.access

    def access(path, mode, *args, **kwargs):
        inside = Path(path).resolve().is_relative_to(folder.resolve())
        return False if inside and mode & os.W_OK else real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


def test_read_only_cache_folder(dataset, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    _read_only(monkeypatch, cache)
    with pytest.raises(ConfigError, match=rf"frame cache folder {cache}: .*not writable.*frame_cache_dir"):
        _cached(dataset, cache)
    assert list(cache.iterdir()) == []
    monkeypatch.undo()
    _cached(dataset, cache)  # built while writable
    _read_only(monkeypatch, cache)
    data = _cached(dataset, cache)  # a finished cache is still usable read-only
    assert isinstance(data.images[CAMS[0]], DiskFrames)
    entry = _entry(dataset, cache)
    os.truncate(entry.frames, 10)
    with pytest.raises(DataError, match=rf"{entry.frames} has 10 bytes.*cannot be rebuilt"):
        _cached(dataset, cache)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_full_disk_is_refused_and_damages_nothing(dataset, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    _cached(dataset, cache, image_size=8)  # an older cache entry that must survive
    before, dataset_before = _snapshot(cache), _snapshot(dataset)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(frame_cache.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(ConfigError, match=rf"frame cache folder {cache}\S*: caching camera .* needs 0 MB, only 0 MB"):
        _cached(dataset, cache)
    monkeypatch.undo()

    def disk_full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(cache / "frames.u8"))

    monkeypatch.setattr(frame_cache.os, "pwrite", disk_full)
    with pytest.raises(ConfigError, match=rf"cannot write the frame cache in {cache}\S*: No space left on device"):
        _cached(dataset, cache)
    monkeypatch.undo()
    after = _snapshot(cache)
    assert {k: v for k, v in after.items() if not k.endswith(".lock")} == {
        k: v for k, v in before.items() if not k.endswith(".lock")
    }  # no partial build left, old entry intact
    assert _snapshot(dataset) == dataset_before


def test_concurrent_loads_build_once(dataset, tmp_path, decodes):
    ds = DatasetReader(dataset)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(cached_camera(ds, CAMS[0], None, tmp_path / "c")))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1]
    assert decodes == [(CAMS[0], i) for i in range(EPISODES)]


def test_options_are_validated(dataset):
    with pytest.raises(ConfigError, match=r"memory_budget_mb=-1"):
        load_episodes(dataset, CAMS, memory_budget_mb=-1)
    with pytest.raises(ConfigError, match=r"memory_budget_mb=-5\.0: must be in \[0, inf\)"):
        TrainConfig(memory_budget_mb=-5)
    cfg = TrainConfig()
    assert cfg.frame_cache_dir == "" and cfg.memory_budget_mb == 0.0  # default: in memory, as before


def test_benchmark_measures_a_variant_and_formats(dataset, tmp_path):
    task = {
        "dataset": str(dataset),
        "cache_dir": str(tmp_path / "cache"),
        "memory_budget_mb": 0.01,
        "batch_size": 8,
        "n_obs_steps": 2,
        "batches": 2,
        "threads": 1,
        "train_batch_size": 4,
        "variant": "bounded_cold",
        "train_steps": 1,
    }
    row = measure(task)
    assert row["on_disk"] == CAMS and row["samples_per_s"] > 0 and row["train_peak_rss_mb"] >= row["rss_start_mb"]
    result = {
        "dataset": str(dataset),
        "num_frames": 36,
        "cameras": {k: [SIZE, SIZE, 3] for k in CAMS},
        "decoded_mb": 0.05,
        "memory_budget_mb": 0.01,
        "batch_size": 8,
        "n_obs_steps": 2,
        "train_batch_size": 4,
        "threads": 1,
        "results": {"bounded_cold": row, "decode_on_demand": {"samples_per_s": 3.0}},
    }
    text = format_data(result)
    assert "5.0 x the memory budget" in text and "bounded_cold" in text and "decode_on_demand" in text


@pytest.mark.slow
def test_bench_data_end_to_end(tmp_path):
    result = bench_data(
        memory_budget_mb=0.1,
        workdir=str(tmp_path),
        image_size=16,
        batch_size=8,
        batches=2,
        train_steps=1,
        train_batch_size=4,
        progress=False,
    )
    rows = result["results"]
    assert set(rows) == {"in_memory", "bounded_cold", "bounded_reused", "memmap", "decode_on_demand"}
    assert result["decoded_mb"] >= 4 * result["memory_budget_mb"]
    assert rows["bounded_reused"]["load_s"] < rows["bounded_cold"]["load_s"]  # reused, not decoded again
    assert rows["bounded_reused"]["on_disk"] and not rows["in_memory"]["on_disk"]
    assert "train peak RSS" in format_data(result) and list(tmp_path.iterdir()) == []  # temporary files removed
