"""CALVIN -> LeRobot: fixtures in CALVIN's exact layout (per-frame npz + auto_lang_ann.npy)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from mode_policy.data.convert_calvin import (
    CalvinFormatError,
    convert_calvin,
    frame_path,
    read_language_windows,
)
from mode_policy.data.reader import DatasetReader
from mode_policy.errors import DataNotFoundError

os.environ.setdefault("SVT_LOG", "1")

STATIC, GRIPPER = "observation.images.static", "observation.images.gripper"
WINDOWS = [(100, 104), (103, 108), (110, 112)]  # inclusive; the first two overlap
ANNS = ["open the drawer", "push the sliding door to the left", "turn on the led light"]
TASKS = ["open_drawer", "move_slider_left", "turn_on_led"]


def _image(size: int, index: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    scale = 200 / size
    img = np.stack([40 + xx * scale * 0.5 + index, 40 + yy * scale * 0.5, np.full((size, size), 90.0)], axis=-1)
    img[: size // 4, : size // 4] = 230.0  # bright top-left corner: CALVIN images are upright, keep them so
    return np.clip(img, 0, 255).astype(np.uint8)


def _frame(index: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(index)
    rel = np.clip(rng.normal(scale=0.5, size=7), -1, 1)
    rel[6] = 1.0 if index % 2 else -1.0
    return {
        "rgb_static": _image(200, index),
        "rgb_gripper": _image(84, index),
        "rgb_tactile": np.zeros((160, 120, 6), np.uint8),
        "depth_static": np.zeros((200, 200), np.float32),
        "depth_gripper": np.zeros((84, 84), np.float32),
        "depth_tactile": np.zeros((160, 120, 2), np.float32),
        "actions": rng.normal(size=7),
        "rel_actions": rel,
        "robot_obs": rng.normal(size=15),
        "scene_obs": rng.normal(size=24),
    }


def write_calvin_split(split: Path, frames: range = range(98, 114), windows=WINDOWS, anns=ANNS, tasks=TASKS) -> dict:
    """A CALVIN split folder: episode_XXXXXXX.npz per frame, lang_annotations/auto_lang_ann.npy."""
    split.mkdir(parents=True, exist_ok=True)
    data = {}
    for i in frames:
        data[i] = _frame(i)
        np.savez_compressed(frame_path(split, i), **data[i])
    lang = {
        "info": {"episodes": [], "indx": [tuple(w) for w in windows]},
        "language": {"ann": list(anns), "task": list(tasks), "emb": np.zeros((len(anns), 1, 384), np.float32)},
    }
    (split / "lang_annotations").mkdir(exist_ok=True)
    np.save(split / "lang_annotations" / "auto_lang_ann.npy", lang, allow_pickle=True)
    np.save(split / "ep_start_end_ids.npy", np.array([[frames.start, frames.stop - 1]]))
    return data


def test_round_trip_windows_become_episodes(tmp_path: Path) -> None:
    split = tmp_path / "task_D_D" / "training"
    raw = write_calvin_split(split)
    out = convert_calvin(split, tmp_path / "ds", progress=False)
    ds = DatasetReader(out)
    assert ds.fps == 30
    assert ds.num_episodes == 3
    assert ds.episode_tasks == ANNS
    lengths = (ds.episode_bounds[:, 1] - ds.episode_bounds[:, 0]).tolist()
    assert lengths == [end - start + 1 for start, end in WINDOWS]  # inclusive ends
    assert [(e["calvin_start"], e["calvin_end"], e["calvin_task"]) for e in ds.episode_extra] == [
        (s, e, t) for (s, e), t in zip(WINDOWS, TASKS)
    ]
    assert ds.features[STATIC]["shape"] == [200, 200, 3]
    assert ds.features[GRIPPER]["shape"] == [84, 84, 3]

    for k, (start, end) in enumerate(WINDOWS):
        ep = ds.episode(k)
        idx = range(start, end + 1)
        for key, feature in (
            ("robot_obs", "observation.state"),
            ("scene_obs", "observation.environment_state"),
            ("rel_actions", "action"),
            ("actions", "absolute_action"),
        ):
            want = np.stack([raw[i][key] for i in idx]).astype(np.float32)
            np.testing.assert_allclose(ep[feature], want, err_msg=f"{k} {feature}")
        for key, feature in (("rgb_static", STATIC), ("rgb_gripper", GRIPPER)):
            want = np.stack([raw[i][key] for i in idx]).astype(np.int16)
            err = np.abs(ep[feature].astype(np.int16) - want)
            assert err.mean() < 3, (k, feature, err.mean())
        assert ep[STATIC][:, 5:40, 5:40].mean() > 215  # still upright (no flip)


def test_resize_and_max_episodes(tmp_path: Path) -> None:
    split = tmp_path / "validation"
    write_calvin_split(split)
    ds = DatasetReader(
        convert_calvin(split, tmp_path / "ds", progress=False, static_size=96, gripper_size=64, max_episodes=2)
    )
    assert ds.num_episodes == 2
    assert ds.features[STATIC]["shape"] == [96, 96, 3]
    assert ds.episode(1)[GRIPPER].shape == (6, 64, 64, 3)


def test_read_language_windows(tmp_path: Path) -> None:
    write_calvin_split(
        tmp_path, frames=range(100, 101), windows=[(100, 100)], anns=["  stack   the blocks "], tasks=["stack_block"]
    )
    (window,) = read_language_windows(tmp_path)
    assert (window.start, window.end, window.length, window.instruction, window.task) == (
        100,
        100,
        1,
        "stack the blocks",
        "stack_block",
    )


# ---------------------------------------------------------------------------------- errors


def test_missing_annotations(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match=r"lang_annotations/auto_lang_ann\.npy: language annotations not found"):
        convert_calvin(tmp_path, tmp_path / "ds", progress=False)


def test_malformed_annotations(tmp_path: Path) -> None:
    write_calvin_split(tmp_path, frames=range(100, 105), windows=[(100, 104)], anns=["a", "b"], tasks=["x", "y"])
    with pytest.raises(CalvinFormatError, match=r"auto_lang_ann\.npy: 1 windows in info.indx but 2 language.ann"):
        convert_calvin(tmp_path, tmp_path / "ds", progress=False)
    np.save(tmp_path / "lang_annotations" / "auto_lang_ann.npy", {"info": {"indx": [(1, 2)]}}, allow_pickle=True)
    with pytest.raises(CalvinFormatError, match=r"auto_lang_ann\.npy: missing key 'language'"):
        convert_calvin(tmp_path, tmp_path / "ds", progress=False)
    write_calvin_split(tmp_path, frames=range(100, 101), windows=[(104, 100)], anns=["a"], tasks=["x"])
    with pytest.raises(CalvinFormatError, match=r"info.indx\[0\] = \(104, 100\) is not a valid inclusive range"):
        convert_calvin(tmp_path, tmp_path / "ds", progress=False)


def test_missing_frame_names_file_and_window(tmp_path: Path) -> None:
    write_calvin_split(tmp_path)
    frame_path(tmp_path, 106).unlink()
    with pytest.raises(
        CalvinFormatError,
        match=r"episode_0000106\.npz: frame file not found \(needed by language "
        r"window 1: frames 103\.\.108\)",
    ):
        convert_calvin(tmp_path, tmp_path / "ds", progress=False)
    assert not (tmp_path / "ds").exists()


def test_missing_key_and_wrong_shape(tmp_path: Path) -> None:
    write_calvin_split(tmp_path)
    frame = _frame(107)
    del frame["rel_actions"]
    np.savez_compressed(frame_path(tmp_path, 107), **frame)
    with pytest.raises(CalvinFormatError, match=r"episode_0000107\.npz: missing key 'rel_actions'"):
        convert_calvin(tmp_path, tmp_path / "ds", progress=False)
    assert not (tmp_path / "ds").exists()

    frame = _frame(107)
    frame["robot_obs"] = np.zeros(14)
    np.savez_compressed(frame_path(tmp_path, 107), **frame)
    with pytest.raises(
        CalvinFormatError, match=r"episode_0000107\.npz: 'robot_obs' has shape \(14,\), expected \(15,\)"
    ):
        convert_calvin(tmp_path, tmp_path / "ds", progress=False)

    frame = _frame(107)
    frame["rgb_static"] = _image(100, 107)
    np.savez_compressed(frame_path(tmp_path, 107), **frame)
    with pytest.raises(
        CalvinFormatError,
        match=r"episode_0000107\.npz: 'rgb_static' is 100x100, but "
        r"episode_0000100\.npz has 200x200",
    ):
        convert_calvin(tmp_path, tmp_path / "ds", progress=False)


def test_truncated_frame(tmp_path: Path) -> None:
    write_calvin_split(tmp_path)
    path = frame_path(tmp_path, 111)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CalvinFormatError, match=r"episode_0000111\.npz: cannot read npz \(truncated or corrupt"):
        convert_calvin(tmp_path, tmp_path / "ds", progress=False)
    assert not (tmp_path / "ds").exists()
