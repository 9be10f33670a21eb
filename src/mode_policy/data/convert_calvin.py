"""CALVIN (language-annotated play data) -> LeRobotDataset v3.0.

Input: one split folder of a CALVIN dataset (e.g. ``task_ABC_D/training`` or
``task_D_D/validation``), laid out as CALVIN's ``dataset/README.md`` describes::

    episode_0000000.npz ...                one file per frame (a dict of arrays):
        rgb_static    (200, 200, 3) uint8      static camera
        rgb_gripper   (84, 84, 3) uint8        gripper camera
        rel_actions   (7,)                     relative TCP action, in [-1, 1], gripper -1/1
        actions       (7,)                     absolute TCP pose action, gripper -1/1
        robot_obs     (15,)                    tcp pos (3), tcp euler (3), gripper width (1),
                                               arm joints (7), gripper action (1)
        scene_obs     (24,)                    doors, lights, three blocks (pos + euler)
    lang_annotations/auto_lang_ann.npy      pickled dict: info.indx [(start, end)] (inclusive
                                            frame indices), language.ann [str], language.task [str]

Only the language-annotated windows become episodes: window ``k`` (frames
``start..end``, both inclusive) is episode ``k`` with ``language.ann[k]`` as its task.
Windows may overlap (CALVIN samples them from continuous play); each is stored in full.
Episode extras record ``calvin_task`` (the task id), ``calvin_start`` and ``calvin_end``.

Frames without camera images (a physics-only recording, e.g. the scripted demonstrations of
:mod:`mode_policy.envs.calvin_record`) are converted too: a camera is converted when the
first annotated frame has it, and every frame must then have it.

Output features:

* ``observation.images.static`` / ``observation.images.gripper``: video, CALVIN's
  images as stored (upright; optionally resized per camera).
* ``observation.state``: float32 (15,) ``robot_obs``; with ``scene_in_state``, (39,)
  ``robot_obs`` then ``scene_obs`` (a state policy that sees the scene).
* ``observation.environment_state``: float32 (24,) ``scene_obs`` (LeRobot's name for
  privileged environment state; the CALVIN benchmark does not give it to policies).
* ``action``: float32 (7,) ``rel_actions``, the action space CALVIN's evaluation uses.
* ``absolute_action``: float32 (7,) ``actions``.

Conversion streams (one window in memory at a time) and every problem raises
:class:`CalvinFormatError` naming the file and what is wrong.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import ACTION_KEY, ENV_STATE_KEY, IMAGES_PREFIX, STATE_KEY
from ..errors import ConfigError, DataError, DataNotFoundError
from .images import resize_images
from .writer import DatasetWriter

__all__ = [
    "CalvinFormatError",
    "CalvinWindow",
    "FPS",
    "FRAME_KEYS",
    "convert_calvin",
    "features_for",
    "frame_path",
    "load_frame",
    "read_language_windows",
]

#: CALVIN's control frequency (``control_freq=30`` in calvin_env).
FPS = 30
STATIC, GRIPPER = IMAGES_PREFIX + "static", IMAGES_PREFIX + "gripper"
#: npz key -> (output feature, per-frame shape; None = image, size checked for consistency).
#: The images are optional (see the module docstring), the rest is required.
FRAME_KEYS: dict[str, tuple[str, tuple[int, ...] | None]] = {
    "rgb_static": (STATIC, None),
    "rgb_gripper": (GRIPPER, None),
    "robot_obs": (STATE_KEY, (15,)),
    "scene_obs": (ENV_STATE_KEY, (24,)),
    "rel_actions": (ACTION_KEY, (7,)),
    "actions": ("absolute_action", (7,)),
}
ROBOT_OBS_NAMES = [
    "tcp_pos_x",
    "tcp_pos_y",
    "tcp_pos_z",
    "tcp_euler_x",
    "tcp_euler_y",
    "tcp_euler_z",
    "gripper_opening_width",
    *[f"arm_joint_{i}" for i in range(7)],
    "gripper_action",
]
SCENE_OBS_NAMES = [
    "sliding_door",
    "drawer",
    "button",
    "switch",
    "lightbulb",
    "green_light",
    *[
        f"{block}_block_{c}"
        for block in ("red", "blue", "pink")
        for c in ("x", "y", "z", "euler_x", "euler_y", "euler_z")
    ],
]
ACTION_NAMES = ["x", "y", "z", "euler_x", "euler_y", "euler_z", "gripper"]
LANG_FILE = "auto_lang_ann.npy"


class CalvinFormatError(DataError):
    """A CALVIN file is missing, unreadable, or has unexpected keys or shapes."""


@dataclass(frozen=True)
class CalvinWindow:
    """One language-annotated window: frames ``start..end`` (inclusive)."""

    start: int
    end: int
    instruction: str
    task: str | None

    @property
    def length(self) -> int:
        return self.end - self.start + 1


# --------------------------------------------------------------------------- reading


def frame_path(split_dir: str | Path, index: int) -> Path:
    """``<split_dir>/episode_XXXXXXX.npz`` of frame ``index``."""
    return Path(split_dir) / f"episode_{int(index):07d}.npz"


def _get(mapping: Any, key: str, where: str) -> Any:
    if not isinstance(mapping, Mapping) or key not in mapping:
        raise CalvinFormatError(f"{where}: missing key '{key}'")
    return mapping[key]


def read_language_windows(split_dir: str | Path, lang_folder: str = "lang_annotations") -> list[CalvinWindow]:
    """The annotated windows of ``<split_dir>/<lang_folder>/auto_lang_ann.npy``, in file order."""
    path = Path(split_dir) / lang_folder / LANG_FILE
    if not path.is_file():
        raise DataNotFoundError(
            f"{path}: language annotations not found; expected a CALVIN split folder "
            f"(e.g. task_D_D/training) containing {lang_folder}/{LANG_FILE}"
        )
    try:
        raw = np.load(path, allow_pickle=True)
        data = raw.item() if isinstance(raw, np.ndarray) and raw.dtype == object and raw.shape == () else raw
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as e:
        raise CalvinFormatError(f"{path}: cannot load (truncated or corrupt file?): {e}") from None
    if not isinstance(data, Mapping):
        raise CalvinFormatError(f"{path}: expected a pickled dict, got {type(data).__name__}")
    indx = _get(_get(data, "info", str(path)), "indx", f"{path} ['info']")
    language = _get(data, "language", str(path))
    anns = _get(language, "ann", f"{path} ['language']")
    tasks = language.get("task") if isinstance(language, Mapping) else None
    indx, anns = list(indx), list(anns)
    if len(indx) != len(anns):
        raise CalvinFormatError(f"{path}: {len(indx)} windows in info.indx but {len(anns)} language.ann entries")
    if tasks is not None and len(list(tasks)) != len(anns):
        raise CalvinFormatError(
            f"{path}: {len(list(tasks))} language.task entries but {len(anns)} language.ann entries"
        )
    tasks = list(tasks) if tasks is not None else [None] * len(anns)
    windows = []
    for k, (pair, ann, task) in enumerate(zip(indx, anns, tasks)):
        try:
            start, end = (int(v) for v in pair)
        except (TypeError, ValueError):
            raise CalvinFormatError(f"{path}: info.indx[{k}] = {pair!r} is not a (start, end) pair") from None
        if start < 0 or end < start:
            raise CalvinFormatError(f"{path}: info.indx[{k}] = ({start}, {end}) is not a valid inclusive range")
        if not isinstance(ann, str) or not ann.strip():
            raise CalvinFormatError(f"{path}: language.ann[{k}] = {ann!r} is not a non-empty string")
        windows.append(CalvinWindow(start, end, " ".join(ann.split()), None if task is None else str(task)))
    if not windows:
        raise CalvinFormatError(f"{path}: no annotated windows")
    return windows


IMAGE_KEYS = ("rgb_static", "rgb_gripper")


def load_frame(path: Path, cameras: tuple[str, ...] | None = IMAGE_KEYS) -> dict[str, np.ndarray]:
    """The arrays of one frame file named in :data:`FRAME_KEYS`, shapes checked: the image
    keys of ``cameras`` (None: those the file has) and all the others."""
    if not path.is_file():
        raise CalvinFormatError(f"{path}: frame file not found")
    out: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key, (_, shape) in FRAME_KEYS.items():
                if shape is None and key not in (npz.files if cameras is None else cameras):
                    continue
                if key not in npz.files:
                    raise CalvinFormatError(f"{path}: missing key '{key}' (has {sorted(npz.files)})")
                value = npz[key]
                if shape is None:
                    if value.ndim != 3 or value.shape[2] != 3 or value.dtype != np.uint8:
                        raise CalvinFormatError(
                            f"{path}: '{key}' is {value.dtype} {value.shape}, expected uint8 (H, W, 3)"
                        )
                elif value.shape != shape:
                    raise CalvinFormatError(f"{path}: '{key}' has shape {value.shape}, expected {shape}")
                elif value.dtype.kind not in "fiu":
                    raise CalvinFormatError(f"{path}: '{key}' has non-numeric dtype {value.dtype}")
                out[key] = value
    except CalvinFormatError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise CalvinFormatError(f"{path}: cannot read npz (truncated or corrupt file?): {e}") from None
    return out


def _frame_size(path: Path) -> dict[str, tuple[int, int]]:
    """(H, W) per camera feature the frame file ``path`` has."""
    frame = load_frame(path, None)
    return {FRAME_KEYS[k][0]: tuple(frame[k].shape[:2]) for k in IMAGE_KEYS if k in frame}  # type: ignore[misc]


def features_for(
    static_shape: tuple[int, int] | None, gripper_shape: tuple[int, int] | None, scene_in_state: bool = False
) -> dict[str, dict]:
    """The LeRobot feature spec of a converted CALVIN dataset (a camera of shape None is left out)."""

    def video(hw: tuple[int, int]) -> dict:
        return {"dtype": "video", "shape": [int(hw[0]), int(hw[1]), 3], "names": ["height", "width", "channels"]}

    state_names = ROBOT_OBS_NAMES + (SCENE_OBS_NAMES if scene_in_state else [])
    cameras = {key: video(shape) for key, shape in ((STATIC, static_shape), (GRIPPER, gripper_shape)) if shape}
    return {
        **cameras,
        STATE_KEY: {"dtype": "float32", "shape": [len(state_names)], "names": list(state_names)},
        ENV_STATE_KEY: {"dtype": "float32", "shape": [24], "names": list(SCENE_OBS_NAMES)},
        ACTION_KEY: {"dtype": "float32", "shape": [7], "names": list(ACTION_NAMES)},
        "absolute_action": {"dtype": "float32", "shape": [7], "names": list(ACTION_NAMES)},
    }


def _read_window(
    split_dir: Path,
    window: CalvinWindow,
    sizes: Mapping[str, tuple[int, int]],
    resize: Mapping[str, int | None],
    reference: Path,
    scene_in_state: bool = False,
) -> dict[str, np.ndarray]:
    """All frames of one window as feature -> (T, *shape); images must have ``sizes``
    (those of the frame file ``reference``, whose cameras every frame must have)."""
    cameras = tuple(k for k in IMAGE_KEYS if FRAME_KEYS[k][0] in sizes)
    columns: dict[str, list[np.ndarray]] = {k: [] for k, (_, shape) in FRAME_KEYS.items() if shape or k in cameras}
    for index in range(window.start, window.end + 1):
        path = frame_path(split_dir, index)
        frame = load_frame(path, cameras)
        for key in cameras:
            feature = FRAME_KEYS[key][0]
            if not resize.get(feature) and frame[key].shape[:2] != tuple(sizes[feature]):
                raise CalvinFormatError(
                    f"{path}: '{key}' is {frame[key].shape[0]}x{frame[key].shape[1]}, but "
                    f"{reference.name} has {sizes[feature][0]}x{sizes[feature][1]}; pass "
                    "static_size/gripper_size to resize all images to one size"
                )
        for key, value in frame.items():
            columns[key].append(value)
    frames: dict[str, np.ndarray] = {}
    for key, values in columns.items():
        feature = FRAME_KEYS[key][0]
        stacked = np.stack(values)  # (T, *shape)
        if FRAME_KEYS[key][1] is None:
            size = resize.get(feature)
            frames[feature] = resize_images(stacked, size) if size else stacked
        else:
            data = stacked.astype(np.float64)
            bad = ~np.isfinite(data)
            if bad.any():
                frame_index = window.start + int(np.argwhere(bad)[0, 0])
                raise CalvinFormatError(f"{frame_path(split_dir, frame_index)}: '{key}' has NaN/inf values")
            frames[feature] = data.astype(np.float32)
    if scene_in_state:
        frames[STATE_KEY] = np.concatenate([frames[STATE_KEY], frames[ENV_STATE_KEY]], axis=1)  # (T, 39)
    return frames


# --------------------------------------------------------------------------- conversion


def convert_calvin(
    split_dir: str | Path,
    out_dir: str | Path,
    overwrite: bool = False,
    progress: bool = True,
    *,
    lang_folder: str = "lang_annotations",
    static_size: int | None = None,
    gripper_size: int | None = None,
    max_episodes: int | None = None,
    scene_in_state: bool = False,
) -> Path:
    """Convert the language-annotated windows of a CALVIN split into a LeRobotDataset v3.0.

    Args:
        split_dir: a CALVIN split folder (``.../training`` or ``.../validation``).
        out_dir: output folder (must be empty or absent unless ``overwrite``).
        overwrite: replace an existing dataset at ``out_dir``.
        progress: show a progress bar.
        lang_folder: annotation subfolder (CALVIN also ships e.g. paraphrased variants).
        static_size / gripper_size: resize that camera to a square of this side
            (default: keep 200 / 84).
        max_episodes: convert only the first N windows (quick experiments).
        scene_in_state: ``observation.state`` = ``robot_obs`` + ``scene_obs`` (39,), for a
            state policy that sees the scene; default ``robot_obs`` only, as CALVIN's policies.

    Returns the dataset folder. Raises :class:`CalvinFormatError` naming the file and the
    problem; nothing is left behind at ``out_dir`` in that case.
    """
    from tqdm.auto import tqdm

    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataNotFoundError(f"{split_dir}: CALVIN split folder not found")
    windows = read_language_windows(split_dir, lang_folder)
    if max_episodes is not None:
        if max_episodes < 1:
            raise ConfigError(f"max_episodes must be >= 1, got {max_episodes}")
        windows = windows[:max_episodes]
    for name, value in (("static_size", static_size), ("gripper_size", gripper_size)):
        if value is not None and value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    # all frame files must exist before anything is written
    for k, window in enumerate(windows):
        for index in range(window.start, window.end + 1):
            if not frame_path(split_dir, index).is_file():
                raise CalvinFormatError(
                    f"{frame_path(split_dir, index)}: frame file not found "
                    f"(needed by language window {k}: frames {window.start}..{window.end})"
                )
    reference = frame_path(split_dir, windows[0].start)
    sizes = _frame_size(reference)
    resize = {STATIC: static_size, GRIPPER: gripper_size}
    out_sizes = {key: (resize[key], resize[key]) if resize[key] else sizes[key] for key in sizes}
    features = features_for(out_sizes.get(STATIC), out_sizes.get(GRIPPER), scene_in_state)

    out_dir = Path(out_dir)
    cleanup = overwrite or not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir()))
    writer = DatasetWriter(
        out_dir,
        FPS,
        features,
        robot_type="franka_panda",
        overwrite=overwrite,
    )
    bar = tqdm(total=len(windows), desc="CALVIN -> LeRobot", unit="episode", disable=not progress)
    with bar, writer.removed_on_error(cleanup):
        for k, window in enumerate(windows):
            frames = _read_window(split_dir, window, sizes, resize, reference, scene_in_state)
            extra: dict[str, Any] = {"calvin_start": window.start, "calvin_end": window.end}
            if window.task is not None:
                extra["calvin_task"] = window.task
            try:
                writer.add_episode(frames, window.instruction, extra=extra)
            except ValueError as e:
                where = f"language window {k} (frames {window.start}..{window.end})"
                raise CalvinFormatError(f"{split_dir}: {where}: {e}") from None
            bar.update(1)
        writer.finalize()
    return out_dir
