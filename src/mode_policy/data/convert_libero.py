"""LIBERO demonstrations (robomimic-style HDF5) -> LeRobotDataset v3.0.

Input: one file per task, as LIBERO's ``scripts/create_dataset.py`` writes them::

    data.attrs["problem_info"]           JSON, "language_instruction" (optional here)
    data.attrs["macros_image_convention"] "opengl" (default) or "opencv" (optional)
    data/demo_<i>/actions                (T, 7) float64, OSC_POSE delta + gripper
    data/demo_<i>/obs/agentview_rgb      (T, 128, 128, 3) uint8
    data/demo_<i>/obs/eye_in_hand_rgb    (T, 128, 128, 3) uint8
    data/demo_<i>/obs/ee_pos             (T, 3) end-effector position
    data/demo_<i>/obs/ee_ori             (T, 3) end-effector orientation, axis-angle
    data/demo_<i>/obs/gripper_states     (T, 2) finger joint positions
    data/demo_<i>/obs/{joint_states, ee_states}, rewards, dones, states, robot_states

Output features (names follow LeRobot's LIBERO datasets where they make sense):

* ``observation.images.agentview`` / ``observation.images.wrist``: video (H, W, 3).
* ``observation.state``: float32 (8,) = ``[ee_pos (3), ee_ori axis-angle (3),
  gripper_states (2)]``, the same vector LeRobot's LIBERO datasets and processors,
  OpenVLA and openpi use (``eef_pos, quat2axisangle(eef_quat), gripper_qpos``).
* ``action``: float32 (7,).

Image orientation. robosuite renders with the OpenGL convention, so LIBERO's stored
images (and the simulator's observations) are upside down. Both this converter and
:mod:`mode_policy.envs.libero` pass every image through
:func:`mode_policy.data.images.libero_image_transform`, which rotates it by 180 degrees (flips
rows and columns), the convention of LeRobot's ``HuggingFaceVLA/libero`` datasets, OpenVLA
and openpi. Training data and evaluation observations therefore always match, also for
policies trained on those public datasets.

The instruction of a file is ``problem_info["language_instruction"]`` when present,
otherwise it is derived from the file name the way LIBERO derives it from task names
(``KITCHEN_SCENE3_turn_on_the_stove_demo.hdf5`` -> ``"turn on the stove"``).

Conversion streams: one demonstration is in memory at a time. Every structural problem
(missing key, wrong shape or dtype, truncated or corrupt file) raises
:class:`LiberoFormatError` naming the file, the demonstration and the problem.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np

from ..constants import ACTION_KEY, IMAGES_PREFIX, STATE_KEY
from ..errors import ConfigError, DataError, DataNotFoundError
from .images import libero_image_transform, resize_images
from .writer import DatasetWriter

__all__ = [
    "FPS",
    "IMAGE_KEYS",
    "LiberoFormatError",
    "convert_libero",
    "demo_keys",
    "features_for",
    "find_hdf5_files",
    "instruction_from_filename",
    "read_instruction",
]

#: LIBERO's control frequency (robosuite ``control_freq=20``).
FPS = 20
#: Output feature -> HDF5 dataset under ``obs/``.
IMAGE_KEYS: dict[str, str] = {
    IMAGES_PREFIX + "agentview": "agentview_rgb",
    IMAGES_PREFIX + "wrist": "eye_in_hand_rgb",
}
STATE_NAMES = ["x", "y", "z", "axis_angle_x", "axis_angle_y", "axis_angle_z", "gripper_left", "gripper_right"]
ACTION_NAMES = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
_STATE_PARTS = (("ee_pos", 3), ("ee_ori", 3), ("gripper_states", 2))
_DEMO_RE = re.compile(r"^demo_(\d+)$")
_SCENE_RE = re.compile(r"SCENE\d+_")


class LiberoFormatError(DataError):
    """A LIBERO HDF5 file is missing a key, has a wrong shape, or is unreadable."""


# --------------------------------------------------------------------------- file discovery and metadata


def find_hdf5_files(paths: Sequence[str | Path] | str | Path) -> list[Path]:
    """A file, a folder (searched recursively for ``*.hdf5``, sorted) or a list of them."""
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not items:
        raise ConfigError("no LIBERO HDF5 paths given")
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.hdf5") if p.is_file())
            if not found:
                raise DataNotFoundError(f"{path}: folder contains no *.hdf5 files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise DataNotFoundError(f"{path}: no such file or folder")
    return list(dict.fromkeys(files))


def instruction_from_filename(path: str | Path) -> str:
    """LIBERO's rule: drop ``_demo`` and the extension; for LIBERO-90/10 names
    (upper-case scene prefix) keep what follows ``SCENE<n>_``; underscores -> spaces."""
    stem = Path(path).name
    for suffix in (".hdf5", ".h5", ".bddl"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    if stem.endswith("_demo"):
        stem = stem[: -len("_demo")]
    if stem[:1].isupper():
        match = _SCENE_RE.search(stem)
        if match:
            stem = stem[match.end() :]
    return " ".join(part for part in stem.split("_") if part)


def _clean_instruction(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value)
    if not isinstance(value, str):
        return ""
    return " ".join(value.strip().strip('"').strip("'").split())


def read_instruction(f: h5py.File, path: str | Path) -> str:
    """``data.attrs["problem_info"]["language_instruction"]`` if present and non-empty,
    else the instruction derived from the file name."""
    raw = f["data"].attrs.get("problem_info") if "data" in f else None
    if raw is not None:
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", errors="replace")
        try:
            info = json.loads(raw)
        except (TypeError, json.JSONDecodeError) as e:
            raise LiberoFormatError(f"{path}: data.attrs['problem_info'] is not valid JSON ({e})") from None
        if isinstance(info, dict):
            text = _clean_instruction(info.get("language_instruction"))
            if text:
                return text
    text = instruction_from_filename(path)
    if not text:
        raise LiberoFormatError(f"{path}: no language instruction in problem_info and none in the file name")
    return text


def _image_convention(f: h5py.File, path: Path) -> str:
    raw = f["data"].attrs.get("macros_image_convention", "opengl")
    if isinstance(raw, bytes):
        raw = raw.decode()
    convention = str(raw).strip().lower()
    if convention not in ("opengl", "opencv"):
        raise LiberoFormatError(f"{path}: unknown data.attrs['macros_image_convention'] {raw!r}")
    return convention


def demo_keys(f: h5py.File, path: str | Path) -> list[str]:
    """``demo_<i>`` groups of ``data`` sorted by the number i (demo_10 after demo_9)."""
    if "data" not in f or not isinstance(f["data"], h5py.Group):
        raise LiberoFormatError(f"{path}: missing group 'data' (not a robomimic/LIBERO HDF5 file)")
    keys = [k for k in f["data"].keys() if _DEMO_RE.match(k)]
    if not keys:
        raise LiberoFormatError(f"{path}: group 'data' has no demo_<i> groups")
    return sorted(keys, key=lambda k: int(_DEMO_RE.match(k).group(1)))  # type: ignore[union-attr]


def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise LiberoFormatError(f"{path}: cannot open as HDF5 (truncated or corrupt file?): {e}") from None


# --------------------------------------------------------------------------- validation and reading


def _dataset(f: h5py.File, path: Path, key: str) -> h5py.Dataset:
    try:
        node = f[key]
    except KeyError:
        raise LiberoFormatError(f"{path}: missing key '{key}'") from None
    except OSError as e:  # damaged object headers
        raise LiberoFormatError(f"{path}: cannot read '{key}' (truncated or corrupt file?): {e}") from None
    if not isinstance(node, h5py.Dataset):
        raise LiberoFormatError(f"{path}: '{key}' is a group, expected a dataset")
    return node


def _check_demo(f: h5py.File, path: Path, demo: str) -> tuple[int, dict[str, tuple[int, int]]]:
    """Check keys, shapes and dtypes of one demo without reading its data.
    Returns (T, {image feature: (H, W)})."""
    base = f"data/{demo}"
    actions = _dataset(f, path, f"{base}/actions")
    if actions.ndim != 2 or actions.shape[1] != 7:
        raise LiberoFormatError(f"{path}: '{base}/actions' has shape {actions.shape}, expected (T, 7)")
    length = actions.shape[0]
    if length == 0:
        raise LiberoFormatError(f"{path}: '{base}' has no frames (actions is empty)")
    if actions.dtype.kind not in "fiu":
        raise LiberoFormatError(f"{path}: '{base}/actions' has non-numeric dtype {actions.dtype}")
    sizes: dict[str, tuple[int, int]] = {}
    for feature, name in IMAGE_KEYS.items():
        key = f"{base}/obs/{name}"
        ds = _dataset(f, path, key)
        if ds.ndim != 4 or ds.shape[0] != length or ds.shape[3] != 3:
            raise LiberoFormatError(f"{path}: '{key}' has shape {ds.shape}, expected ({length}, H, W, 3)")
        if ds.dtype != np.uint8:
            raise LiberoFormatError(f"{path}: '{key}' has dtype {ds.dtype}, expected uint8")
        sizes[feature] = (int(ds.shape[1]), int(ds.shape[2]))
    _state_sources(f, path, base, length)
    return length, sizes


def _state_sources(f: h5py.File, path: Path, base: str, length: int) -> list[str]:
    """Datasets the 8-d state is concatenated from: ee_pos, ee_ori, gripper_states (or
    ee_states (T, 6) = [ee_pos, ee_ori] when ee_pos/ee_ori are absent)."""
    obs = f"{base}/obs"
    if f"{obs}/ee_pos" not in f and f"{obs}/ee_ori" not in f and f"{obs}/ee_states" in f:
        parts = [(f"{obs}/ee_states", 6), (f"{obs}/gripper_states", 2)]
    else:
        parts = [(f"{obs}/{name}", width) for name, width in _STATE_PARTS]
    for key, width in parts:
        ds = _dataset(f, path, key)
        if ds.shape != (length, width):
            raise LiberoFormatError(f"{path}: '{key}' has shape {ds.shape}, expected ({length}, {width})")
        if ds.dtype.kind not in "fiu":
            raise LiberoFormatError(f"{path}: '{key}' has non-numeric dtype {ds.dtype}")
    return [key for key, _ in parts]


def _read(ds: h5py.Dataset, path: Path) -> np.ndarray:
    try:
        return ds[()]
    except (OSError, RuntimeError) as e:
        raise LiberoFormatError(f"{path}: cannot read '{ds.name}' (truncated or corrupt file?): {e}") from None


def _read_demo(
    f: h5py.File, path: Path, demo: str, convention: str, image_size: tuple[int, int] | None
) -> dict[str, np.ndarray]:
    base = f"data/{demo}"
    length, _ = _check_demo(f, path, demo)
    frames: dict[str, np.ndarray] = {}
    for feature, name in IMAGE_KEYS.items():
        images = libero_image_transform(_read(f[f"{base}/obs/{name}"], path), convention)  # (T, H, W, 3)
        frames[feature] = resize_images(images, image_size) if image_size is not None else images
    state = np.concatenate(
        [_read(f[key], path).astype(np.float64) for key in _state_sources(f, path, base, length)], axis=1
    )  # (T, 8)
    actions = _read(f[f"{base}/actions"], path).astype(np.float64)  # (T, 7)
    for key, values in ((STATE_KEY, state), (ACTION_KEY, actions)):
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.argwhere(bad)[0, 0])
            raise LiberoFormatError(f"{path}: '{base}' {key} has NaN/inf values (first at frame {row})")
    frames[STATE_KEY] = state.astype(np.float32)
    frames[ACTION_KEY] = actions.astype(np.float32)
    return frames


def features_for(image_shape: tuple[int, int]) -> dict[str, dict]:
    """The LeRobot feature spec of a converted LIBERO dataset with (H, W) images."""
    h, w = image_shape
    video = {"dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"]}
    return {
        **{key: dict(video) for key in IMAGE_KEYS},
        STATE_KEY: {"dtype": "float32", "shape": [8], "names": list(STATE_NAMES)},
        ACTION_KEY: {"dtype": "float32", "shape": [7], "names": list(ACTION_NAMES)},
    }


def _scan(
    files: Sequence[Path], image_size: tuple[int, int] | None
) -> tuple[list[tuple[Path, list[str]]], tuple[int, int]]:
    """Open every file once and check every demo's structure before anything is written.
    Returns the demo lists and the output image size."""
    plan: list[tuple[Path, list[str]]] = []
    size: tuple[int, int] | None = image_size
    size_source = ""
    for path in files:
        with _open(path) as f:
            keys = demo_keys(f, path)
            read_instruction(f, path)
            _image_convention(f, path)
            for demo in keys:
                _, sizes = _check_demo(f, path, demo)
                for feature, hw in sizes.items():
                    if image_size is not None:
                        continue
                    if size is None:
                        size, size_source = hw, f"{path} data/{demo}"
                    elif hw != size:
                        raise LiberoFormatError(
                            f"{path}: 'data/{demo}' {feature} images are {hw[0]}x{hw[1]} but {size_source} has "
                            f"{size[0]}x{size[1]}; pass image_size=... to resize all images to one size"
                        )
            plan.append((path, keys))
    assert size is not None
    return plan, size


def _iter_demos(
    plan: Sequence[tuple[Path, list[str]]], image_size: tuple[int, int] | None
) -> Iterator[tuple[Path, str, str, dict]]:
    for path, keys in plan:
        with _open(path) as f:
            instruction = read_instruction(f, path)
            convention = _image_convention(f, path)
            for demo in keys:
                yield path, demo, instruction, _read_demo(f, path, demo, convention, image_size)


# --------------------------------------------------------------------------- conversion


def convert_libero(
    hdf5_paths: Sequence[str | Path] | str | Path,
    out_dir: str | Path,
    overwrite: bool = False,
    progress: bool = True,
    image_size: int | None = None,
) -> Path:
    """Convert LIBERO HDF5 demonstration files into one LeRobotDataset v3.0 at ``out_dir``.

    Args:
        hdf5_paths: a ``*.hdf5`` file, a folder (searched recursively) or a list of them.
            Files are processed in the given order (folders sorted by path); the demos of
            each file in numeric order. Every demo becomes one episode whose task is the
            file's instruction; episode extras ``source_file`` and ``demo`` trace it back.
        out_dir: output folder (must be empty or absent unless ``overwrite``).
        overwrite: replace an existing dataset at ``out_dir``.
        progress: show a progress bar.
        image_size: resize both cameras to ``image_size x image_size`` (default: keep the
            stored size, 128 x 128 for LIBERO's files).

    Returns the dataset folder. Raises :class:`LiberoFormatError` naming file and problem
    for malformed input; nothing is left behind at ``out_dir`` in that case.
    """
    from tqdm.auto import tqdm

    files = find_hdf5_files(hdf5_paths)
    size = None if image_size is None else (int(image_size), int(image_size))
    if size is not None and min(size) <= 0:
        raise ConfigError(f"image_size must be positive, got {image_size}")
    plan, out_size = _scan(files, size)
    total = sum(len(keys) for _, keys in plan)

    out_dir = Path(out_dir)
    # remove our partial output on failure, but never a folder that held something else
    cleanup = overwrite or not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir()))
    writer = DatasetWriter(out_dir, FPS, features_for(out_size), robot_type="panda", overwrite=overwrite)
    bar = tqdm(total=total, desc="LIBERO -> LeRobot", unit="demo", disable=not progress)
    with bar, writer.removed_on_error(cleanup):
        for path, demo, instruction, frames in _iter_demos(plan, size):
            try:
                writer.add_episode(frames, instruction, extra={"source_file": path.name, "demo": demo})
            except ValueError as e:
                raise LiberoFormatError(f"{path}: 'data/{demo}': {e}") from None
            bar.update(1)
        writer.finalize()
    return out_dir
