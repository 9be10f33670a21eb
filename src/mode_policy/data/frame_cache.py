"""Decoded camera frames: one episode at a time, or all of a camera, cached on disk.

A camera's frames are decoded once into a flat uint8 file (N, H, W, 3) at the
policy's image size and read back with explicit reads (``os.preadv``), so a
process holds only the batch it asked for. Layout of a cache folder::

    <cache_dir>/<dataset name>-<hash of its path>/
        <camera>-<H>x<W>/            one finished camera cache (renamed into place whole)
            frames.u8                N * H * W * 3 bytes, frame i at offset i * H * W * 3
            manifest.json            written last: format, camera, sizes, dataset fingerprint
        .<camera>-<H>x<W>.build/     an unfinished build (frames.u8 + progress.json): resumed
        .<camera>-<H>x<W>.lock       flock: one process builds, the others wait

The fingerprint hashes ``meta/info.json`` and the size and mtime of every file under
``meta/``, ``data/``, ``videos/`` and ``images/``: a changed dataset gets a new cache; a
cache whose manifest or frames file is damaged is rebuilt (or refused, naming the file,
where the cache folder cannot be written).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, DataError, ModePolicyError
from ..fileio import atomic_write_json, check_writable, file_lock, replacing
from .images import resize_images
from .reader import DatasetReader

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
FRAMES_FILE = "frames.u8"
MANIFEST_FILE = "manifest.json"
PROGRESS_FILE = "progress.json"
RESIZE = "bilinear-antialias"  # how frames are brought to the cache's size (mode_policy.data.images.resize_images)
_SAVE_PROGRESS_S = 5.0  # a killed build loses at most this much decoding
_FINGERPRINTED = ("meta", "data", "videos", "images")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/mode_policy/frames`` (``~/.cache/mode_policy/frames``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mode_policy" / "frames"


def episode_frames(ds: DatasetReader, key: str, i: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decoded frames uint8 (T, h, w, 3) of camera ``key`` in the episode at position ``i``,
    resized to ``size`` (h, w) when given; DataError when they do not match the metadata."""
    shape = tuple(ds.features[key]["shape"])
    lo, hi = (int(v) for v in ds.episode_bounds[i])
    frames = ds.video_frames(key, i) if key in ds.video_keys else ds.episode(i, [key])[key]
    if frames.shape != (hi - lo, *shape):
        raise DataError(
            f"dataset {ds.root}: camera {key!r} of episode {int(ds.episode_indices[i])} decodes to "
            f"{tuple(frames.shape)}, expected {(hi - lo, *shape)}"
        )
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    return frames if size is None else resize_images(frames, size)


def dataset_fingerprint(root: Path) -> str:
    """Hash of ``meta/info.json`` and of the name, size and mtime of every dataset file (not hidden ones)."""
    h = hashlib.sha256(f"format {CACHE_FORMAT}\n".encode())
    h.update((root / "meta" / "info.json").read_bytes())
    for sub in _FINGERPRINTED:
        for path in sorted((root / sub).rglob("*")):
            rel = path.relative_to(root)
            if path.is_file() and not any(part.startswith(".") for part in rel.parts):
                st = path.stat()
                h.update(f"{rel.as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


@dataclass(frozen=True)
class CacheEntry:
    """Where and what one camera's cache is (see the module docstring)."""

    root: Path  # the dataset
    camera: str
    num_frames: int
    height: int
    width: int
    fingerprint: str
    folder: Path  # the finished cache

    @property
    def frame_bytes(self) -> int:
        return self.height * self.width * 3

    @property
    def total_bytes(self) -> int:
        return self.num_frames * self.frame_bytes

    @property
    def frames(self) -> Path:
        return self.folder / FRAMES_FILE

    @property
    def build(self) -> Path:
        return self.folder.with_name(f".{self.folder.name}.build")

    @property
    def lock(self) -> Path:
        return self.folder.with_name(f".{self.folder.name}.lock")

    def identity(self) -> dict:
        """What a manifest or a build's progress must match for the frames to be these."""
        return {
            "format": CACHE_FORMAT,
            "camera": self.camera,
            "fingerprint": self.fingerprint,
            "num_frames": self.num_frames,
            "height": self.height,
            "width": self.width,
            "resize": RESIZE,
        }


def cache_entry(ds: DatasetReader, key: str, size: tuple[int, int] | None, cache_dir: str | Path) -> CacheEntry:
    """The cache entry of camera ``key`` of ``ds`` at ``size`` (h, w; None: the camera's own)."""
    shape = tuple(ds.features[key]["shape"])
    if len(shape) != 3 or shape[2] != 3:
        raise DataError(f"dataset {ds.root}: camera {key!r} has shape {list(shape)}, expected [H, W, 3]")
    height, width = size or shape[:2]
    root = Path(ds.root).resolve()
    ds_dir = Path(cache_dir) / f"{_safe_name(root.name)}-{hashlib.sha256(str(root).encode()).hexdigest()[:10]}"
    return CacheEntry(
        root,
        key,
        ds.num_frames,
        int(height),
        int(width),
        dataset_fingerprint(root),
        ds_dir / f"{_safe_name(key)}-{height}x{width}",
    )


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def cache_problem(entry: CacheEntry) -> tuple[str, str] | None:
    """None when ``entry`` is a finished cache of these frames, else (kind, message) with kind
    ``missing``, ``stale`` (the dataset or format changed) or ``corrupt`` (names the file)."""
    manifest_path = entry.folder / MANIFEST_FILE
    if not entry.folder.exists():
        return "missing", f"no frame cache at {entry.folder}"
    manifest = _read_json(manifest_path)
    if manifest is None:
        return "corrupt", f"frame cache manifest {manifest_path} is missing or not a JSON object"
    want = entry.identity()
    if any(manifest.get(k) != want[k] for k in ("format", "fingerprint", "resize")):
        return "stale", f"frame cache {entry.folder} was built from another version of the dataset"
    wrong = [k for k in want if manifest.get(k) != want[k]]
    if wrong:
        return "corrupt", f"frame cache manifest {manifest_path}: {', '.join(wrong)} do not match the dataset"
    try:
        have = entry.frames.stat().st_size
    except OSError:
        return "corrupt", f"frame cache file {entry.frames} is missing"
    if have != entry.total_bytes:
        return "corrupt", f"frame cache file {entry.frames} has {have} bytes, expected {entry.total_bytes} (truncated?)"
    return None


def cached_camera(
    ds: DatasetReader,
    key: str,
    size: tuple[int, int] | None,
    cache_dir: str | Path,
    advance: Callable[[int], None] = lambda n: None,
) -> CacheEntry:
    """The finished cache of camera ``key`` (decoding and writing it first if missing, stale or
    corrupt); ``advance(n)`` is told of every n frames decoded. ConfigError naming the folder when
    it cannot be written; DataError naming the file for a corrupt cache that cannot be rebuilt."""
    entry = cache_entry(ds, key, size, cache_dir)
    problem = cache_problem(entry)
    if problem is None:
        return entry
    try:
        check_writable(entry.folder)
        entry.folder.parent.mkdir(parents=True, exist_ok=True)
    except (ConfigError, OSError) as err:
        reason = f"{err.strerror} ({err.filename})" if isinstance(err, OSError) else str(err)
        if problem[0] == "corrupt":
            raise DataError(f"{problem[1]}, and it cannot be rebuilt: {reason}") from None
        raise ConfigError(
            f"cannot cache camera {key!r} of {ds.root} in frame cache folder {Path(cache_dir)}: "
            f"{reason}; choose another frame_cache_dir"
        ) from None
    with file_lock(entry.lock):
        problem = cache_problem(entry)  # another process may have built it while we waited
        if problem is None:
            return entry
        if problem[0] == "corrupt":
            log.warning("%s: rebuilding it", problem[1])
        try:
            _build(ds, entry, advance)
        except ModePolicyError:
            shutil.rmtree(entry.build, ignore_errors=True)
            raise
        except OSError as err:
            shutil.rmtree(entry.build, ignore_errors=True)
            raise ConfigError(
                f"cannot write the frame cache in {entry.folder.parent}: "
                f"{err.strerror or err} ({err.filename or entry.build}); the dataset and any older "
                "cache are unchanged: free space or choose another frame_cache_dir"
            ) from None
    return entry


def _resumable(entry: CacheEntry) -> int:
    """Episodes already written by an interrupted build of the same frames (0: start afresh)."""
    progress = _read_json(entry.build / PROGRESS_FILE)
    frames = entry.build / FRAMES_FILE
    if (
        progress is not None
        and progress.get("identity") == entry.identity()
        and frames.is_file()
        and frames.stat().st_size == entry.total_bytes
        and isinstance(progress.get("episodes_done"), int)
    ):
        return progress["episodes_done"]
    shutil.rmtree(entry.build, ignore_errors=True)
    return 0


def _check_space(entry: CacheEntry, folder: Path) -> None:
    have = 0
    if (entry.build / FRAMES_FILE).is_file():
        have = (entry.build / FRAMES_FILE).stat().st_blocks * 512  # what the interrupted build already holds
    need, free = entry.total_bytes - have, shutil.disk_usage(folder).free
    if need > free:
        raise ConfigError(
            f"frame cache folder {folder}: caching camera {entry.camera!r} needs {need / 2**20:.0f} MB, "
            f"only {free / 2**20:.0f} MB free; free space or choose another frame_cache_dir"
        )


def _build(ds: DatasetReader, entry: CacheEntry, advance: Callable[[int], None]) -> None:
    """Decode every episode into ``entry.build`` (resuming an interrupted build), then rename it into place."""
    done = _resumable(entry)
    _check_space(entry, entry.folder.parent)
    entry.build.mkdir(parents=True, exist_ok=True)
    size = (entry.height, entry.width)
    bounds = ds.episode_bounds.tolist()
    advance(sum(hi - lo for lo, hi in bounds[:done]))
    with open(entry.build / FRAMES_FILE, "r+b" if done else "w+b") as f:
        if not done:
            f.truncate(entry.total_bytes)
        saved = time.monotonic()
        for i in range(done, len(bounds)):
            lo, hi = bounds[i]
            frames = episode_frames(ds, entry.camera, i, size)  # (T, h, w, 3)
            if not 0 <= lo <= hi <= entry.num_frames:
                raise DataError(
                    f"dataset {ds.root}: episode {int(ds.episode_indices[i])} spans frames {lo}..{hi}, "
                    f"outside the dataset's {entry.num_frames}"
                )
            if os.pwrite(f.fileno(), memoryview(frames).cast("B"), lo * entry.frame_bytes) != frames.nbytes:
                raise OSError(errno.ENOSPC, "short write", str(entry.build / FRAMES_FILE))
            advance(hi - lo)
            if time.monotonic() - saved > _SAVE_PROGRESS_S:
                os.fsync(f.fileno())  # the frames first, then the record that they are there
                atomic_write_json(entry.build / PROGRESS_FILE, {"identity": entry.identity(), "episodes_done": i + 1})
                saved = time.monotonic()
        os.fsync(f.fileno())
    atomic_write_json(entry.build / MANIFEST_FILE, {**entry.identity(), "dataset": str(entry.root)})
    (entry.build / PROGRESS_FILE).unlink(missing_ok=True)
    with replacing(entry.folder, overwrite=True) as new:
        os.replace(entry.build, new)


class DiskFrames:
    """One camera's frames (N, H, W, 3) uint8 in a cache file, read on demand.

    ``frames[index]`` (a tensor or array of frame indices, a slice or an int) returns a tensor
    (*index.shape, H, W, 3); each run of consecutive indices is one ``preadv`` straight into
    the batch. Reads go through the kernel's page cache, which is shared and reclaimable and
    not this process's resident memory (unlike a memory map, whose touched pages count toward
    RSS), so the process holds only the batches it gathers.
    """

    dtype = torch.uint8

    def __init__(self, path: str | Path, num_frames: int, height: int, width: int) -> None:
        self.path = Path(path)
        self.shape = torch.Size((num_frames, height, width, 3))
        self._frame_bytes = height * width * 3
        self._file = open(self.path, "rb", buffering=0)  # noqa: SIM115 - open for the object's life

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"DiskFrames({str(self.path)!r}, shape={tuple(self.shape)})"

    def __getstate__(self) -> dict:  # picklable for worker processes: they reopen the file
        return {"path": self.path, "shape": self.shape}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], *state["shape"][:3])

    def __getitem__(self, index: Tensor | np.ndarray | slice | int) -> Tensor:
        if isinstance(index, slice):
            index = np.arange(len(self))[index]
        idx = np.asarray(index, dtype=np.int64)  # (*I)
        flat = idx.reshape(-1)
        flat = np.where(flat < 0, flat + len(self), flat)
        if flat.size and (flat.min() < 0 or flat.max() >= len(self)):
            raise IndexError(f"{self.path}: frame index out of range (the cache holds {len(self)} frames)")
        out = np.empty((flat.size, *self.shape[1:]), dtype=np.uint8)  # (M, H, W, 3)
        breaks = np.flatnonzero(np.diff(flat) != 1) + 1
        fd = self._file.fileno()
        for lo, hi in zip(np.r_[0, breaks].tolist(), np.r_[breaks, flat.size].tolist()):
            want = (hi - lo) * self._frame_bytes
            if os.preadv(fd, [out[lo:hi]], int(flat[lo]) * self._frame_bytes) != want:
                raise DataError(
                    f"frame cache file {self.path} is shorter than its manifest says (truncated "
                    "while in use?); delete its folder to rebuild it"
                )
        return torch.from_numpy(out).view(*idx.shape, *self.shape[1:])


def load_frames(entry: CacheEntry) -> Tensor:
    """A finished cache read whole into memory: uint8 (N, H, W, 3)."""
    array = np.fromfile(entry.frames, dtype=np.uint8)
    if array.size != entry.total_bytes:
        raise DataError(f"frame cache file {entry.frames} has {array.size} bytes, expected {entry.total_bytes}")
    return torch.from_numpy(array).view(entry.num_frames, entry.height, entry.width, 3)
