"""LIBERO HDF5 -> LeRobot: fixtures in LIBERO's exact layout (key names, dtypes, attrs)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from mode_policy.data.convert_libero import (
    LiberoFormatError,
    convert_libero,
    instruction_from_filename,
)
from mode_policy.data.images import libero_image_transform, resize_images
from mode_policy.data.reader import DatasetReader
from mode_policy.errors import DataError

os.environ.setdefault("SVT_LOG", "1")

SIZE = 32  # LIBERO stores 128 x 128; small images keep the tests fast, the layout is the same
AGENT, WRIST = "observation.images.agentview", "observation.images.wrist"


def _images(length: int, seed: int) -> np.ndarray:
    """uint8 (T, S, S, 3): a bright top-left quadrant on a smooth gradient (orientation is visible)."""
    t = np.arange(length)[:, None, None]
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    base = (40 + 2 * xx + yy + 3 * t + 10 * seed).astype(np.float64)  # (T, S, S)
    img = np.stack([base, base * 0.5 + 30, np.full_like(base, 60.0)], axis=-1)
    img[:, : SIZE // 2, : SIZE // 2, :] = 235.0
    return np.clip(img, 0, 255).astype(np.uint8)


def _demo(rng: np.random.Generator, length: int, seed: int) -> dict[str, np.ndarray]:
    ee_pos = rng.normal(size=(length, 3))
    ee_ori = rng.normal(size=(length, 3))
    return {
        "actions": rng.uniform(-1, 1, size=(length, 7)),  # float64, like LIBERO
        "obs/agentview_rgb": _images(length, seed),
        "obs/eye_in_hand_rgb": _images(length, seed + 50)[:, ::-1],
        "obs/gripper_states": rng.uniform(-0.04, 0.04, size=(length, 2)),
        "obs/joint_states": rng.normal(size=(length, 7)),
        "obs/ee_pos": ee_pos,
        "obs/ee_ori": ee_ori,
        "obs/ee_states": np.concatenate([ee_pos, ee_ori], axis=1),
        "rewards": np.r_[np.zeros(length - 1), 1].astype(np.uint8),
        "dones": np.r_[np.zeros(length - 1), 1].astype(np.uint8),
        "states": rng.normal(size=(length, 47)),
        "robot_states": rng.normal(size=(length, 9)),
    }


def write_libero_file(
    path: Path,
    lengths: list[int],
    instruction: str | list[str] | None = None,
    seed: int = 0,
    drop: tuple[str, str] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """A LIBERO demo file as scripts/create_dataset.py writes it; returns the demos by name."""
    rng = np.random.default_rng(seed)
    demos = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        grp = f.create_group("data")
        grp.attrs["env_name"] = "Libero_Kitchen_Tabletop_Manipulation"
        if instruction is not None:
            problem = {
                "problem_name": "libero_kitchen_tabletop_manipulation",
                "domain_name": "robosuite",
                "language_instruction": instruction,
            }
            grp.attrs["problem_info"] = json.dumps(problem)
        grp.attrs["macros_image_convention"] = "opengl"
        grp.attrs["bddl_file_name"] = f"libero/bddl_files/{path.stem}.bddl"
        grp.attrs["env_args"] = json.dumps({"type": 1, "env_name": "x"})
        total = 0
        for i, length in enumerate(lengths):
            name = f"demo_{i}"
            data = _demo(rng, length, seed + i)
            demos[name] = data
            ep = grp.create_group(name)
            for key, value in data.items():
                if drop == (name, key):
                    continue
                ep.create_dataset(key, data=value)
            ep.attrs["num_samples"] = length
            ep.attrs["model_file"] = "<mujoco/>"
            ep.attrs["init_state"] = data["states"][0]
            total += length
        grp.attrs["num_demos"] = len(lengths)
        grp.attrs["total"] = total
    return demos


# ---------------------------------------------------------------------------------- instructions


@pytest.mark.parametrize(
    "name, expected",
    [
        (
            "KITCHEN_SCENE3_turn_on_the_stove_and_put_the_moka_pot_on_it_demo.hdf5",
            "turn on the stove and put the moka pot on it",
        ),
        ("KITCHEN_SCENE10_close_the_top_drawer_of_the_cabinet_demo.hdf5", "close the top drawer of the cabinet"),
        (
            "LIVING_ROOM_SCENE2_put_both_the_alphabet_soup_and_the_tomato_sauce_in_the_basket_demo.hdf5",
            "put both the alphabet soup and the tomato sauce in the basket",
        ),
        (
            "pick_up_the_black_bowl_next_to_the_ramekin_and_place_it_on_the_plate_demo.hdf5",
            "pick up the black bowl next to the ramekin and place it on the plate",
        ),
        ("open_the_middle_drawer_of_the_cabinet.hdf5", "open the middle drawer of the cabinet"),
    ],
)
def test_instruction_from_filename(name: str, expected: str) -> None:
    assert instruction_from_filename(name) == expected


def test_instruction_rule_matches_libero_for_every_task() -> None:
    """Cross-check against LIBERO's own grab_language_from_filename on all registered task names."""
    pytest.importorskip("libero", reason="the `libero` package is not installed")
    try:
        from libero.libero.benchmark import grab_language_from_filename, libero_task_map
    except Exception as e:  # noqa: BLE001 - any broken install: skip, this is only a cross-check
        pytest.skip(f"libero.libero.benchmark not importable: {e}")
    names = {
        name
        for suite in ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
        for name in libero_task_map[suite]
    }
    assert len(names) >= 130
    for name in names:
        assert instruction_from_filename(f"{name}_demo.hdf5") == grab_language_from_filename(name + ".bddl")


# ---------------------------------------------------------------------------------- conversion


def test_round_trip_values_instructions_boundaries(tmp_path: Path) -> None:
    lengths_a = [3, 4, 5, 3, 4, 5, 3, 4, 5, 3, 6]  # demo_0 .. demo_10: demo_10 must come last
    file_a = tmp_path / "raw" / "KITCHEN_SCENE3_turn_on_the_stove_demo.hdf5"
    file_b = tmp_path / "raw" / "open_the_drawer_demo.hdf5"
    demos_a = write_libero_file(file_a, lengths_a, instruction=None, seed=0)
    demos_b = write_libero_file(file_b, [7, 2], instruction='"Open the top drawer"', seed=100)

    out = convert_libero([file_a, file_b], tmp_path / "ds", progress=False)
    ds = DatasetReader(out)
    assert ds.num_episodes == 13
    assert ds.fps == 20
    expected = [(file_a, f"demo_{i}", demos_a[f"demo_{i}"], "turn on the stove") for i in range(11)]
    expected += [(file_b, f"demo_{i}", demos_b[f"demo_{i}"], "Open the top drawer") for i in range(2)]
    assert ds.episode_tasks == [e[3] for e in expected]
    assert [x["demo"] for x in ds.episode_extra] == [e[1] for e in expected]
    assert [x["source_file"] for x in ds.episode_extra] == [e[0].name for e in expected]
    lengths = (ds.episode_bounds[:, 1] - ds.episode_bounds[:, 0]).tolist()
    assert lengths == lengths_a + [7, 2]
    assert ds.features["observation.state"]["shape"] == [8]
    assert ds.features[AGENT]["shape"] == [SIZE, SIZE, 3]

    for i in (0, 9, 10, 11):
        _, _, raw, _ = expected[i]
        ep = ds.episode(i)
        state = np.concatenate([raw["obs/ee_pos"], raw["obs/ee_ori"], raw["obs/gripper_states"]], axis=1)
        np.testing.assert_allclose(ep["observation.state"], state.astype(np.float32))
        np.testing.assert_allclose(ep["action"], raw["actions"].astype(np.float32))
        for key, name in ((AGENT, "obs/agentview_rgb"), (WRIST, "obs/eye_in_hand_rgb")):
            want = raw[name][:, ::-1, ::-1]  # rotated by 180 degrees
            err = np.abs(ep[key].astype(np.int16) - want.astype(np.int16))
            assert err.mean() < 4, (i, key, err.mean())
        # the bright quadrant moved from top-left to bottom-right
        agent = ep[AGENT].astype(np.float64)
        assert agent[:, SIZE // 2 + 2 :, SIZE // 2 + 2 :].mean() > 220
        assert agent[:, 2 : SIZE // 2 - 2, 2 : SIZE // 2 - 2].mean() < 200


def test_folder_input_sorted_and_resized(tmp_path: Path) -> None:
    write_libero_file(tmp_path / "raw" / "b_task_demo.hdf5", [3], seed=1)
    write_libero_file(tmp_path / "raw" / "sub" / "a_task_demo.hdf5", [4], seed=2)
    out = convert_libero(tmp_path / "raw", tmp_path / "ds", progress=False, image_size=16)
    ds = DatasetReader(out)
    assert ds.episode_tasks == ["b task", "a task"]  # sorted by path: raw/b_... < raw/sub/a_...
    assert ds.features[AGENT]["shape"] == [16, 16, 3]
    assert ds.episode(1)[WRIST].shape == (4, 16, 16, 3)


def test_problem_info_list_and_ee_states_fallback(tmp_path: Path) -> None:
    path = tmp_path / "KITCHEN_SCENE1_wrong_name_demo.hdf5"
    demos = write_libero_file(path, [3], instruction=["put", "the", "bowl", "away"])
    with h5py.File(path, "a") as f:  # some files only have ee_states
        del f["data/demo_0/obs/ee_pos"], f["data/demo_0/obs/ee_ori"]
    ds = DatasetReader(convert_libero(path, tmp_path / "ds", progress=False))
    assert ds.episode_tasks == ["put the bowl away"]
    raw = demos["demo_0"]
    state = np.concatenate([raw["obs/ee_states"], raw["obs/gripper_states"]], axis=1)
    np.testing.assert_allclose(ds.episode(0)["observation.state"], state.astype(np.float32))


def test_image_transform_conventions() -> None:
    img = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    np.testing.assert_array_equal(libero_image_transform(img), img[:, ::-1, ::-1])
    # an opencv-convention image is the opengl one flipped vertically; both end up identical
    np.testing.assert_array_equal(libero_image_transform(img[:, ::-1], "opencv"), libero_image_transform(img))
    assert resize_images(_images(2, 0), 8).shape == (2, 8, 8, 3)


# ---------------------------------------------------------------------------------- errors


def test_missing_key_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "task_demo.hdf5"
    write_libero_file(path, [3, 3], drop=("demo_1", "obs/gripper_states"))
    with pytest.raises(LiberoFormatError, match=r"task_demo\.hdf5: missing key 'data/demo_1/obs/gripper_states'"):
        convert_libero(path, tmp_path / "ds", progress=False)
    assert not (tmp_path / "ds").exists()  # nothing half-written is left behind


def test_missing_image_key(tmp_path: Path) -> None:
    path = tmp_path / "task_demo.hdf5"
    write_libero_file(path, [3], drop=("demo_0", "obs/eye_in_hand_rgb"))
    with pytest.raises(LiberoFormatError, match="missing key 'data/demo_0/obs/eye_in_hand_rgb'"):
        convert_libero(path, tmp_path / "ds", progress=False)


def test_truncated_file(tmp_path: Path) -> None:
    good = tmp_path / "good_demo.hdf5"
    bad = tmp_path / "broken_demo.hdf5"
    write_libero_file(good, [3])
    write_libero_file(bad, [5, 5])
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.raises(LiberoFormatError, match=r"broken_demo\.hdf5: .*truncated or corrupt"):
        convert_libero([good, bad], tmp_path / "ds", progress=False)
    assert not (tmp_path / "ds").exists()


def test_not_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "notes_demo.hdf5"
    path.write_text("hello")
    with pytest.raises(LiberoFormatError, match=r"notes_demo\.hdf5: cannot open as HDF5"):
        convert_libero(path, tmp_path / "ds", progress=False)


def test_wrong_shapes(tmp_path: Path) -> None:
    path = tmp_path / "task_demo.hdf5"
    write_libero_file(path, [4])
    with h5py.File(path, "a") as f:
        del f["data/demo_0/actions"]
        f["data/demo_0/actions"] = np.zeros((4, 6))
    with pytest.raises(LiberoFormatError, match=r"'data/demo_0/actions' has shape \(4, 6\), expected \(T, 7\)"):
        convert_libero(path, tmp_path / "ds", progress=False)

    write_libero_file(path, [4])
    with h5py.File(path, "a") as f:
        del f["data/demo_0/obs/ee_pos"]
        f["data/demo_0/obs/ee_pos"] = np.zeros((3, 3))  # one frame short
    with pytest.raises(LiberoFormatError, match=r"'data/demo_0/obs/ee_pos' has shape \(3, 3\), expected \(4, 3\)"):
        convert_libero(path, tmp_path / "ds", progress=False)

    write_libero_file(path, [4])
    with h5py.File(path, "a") as f:
        img = f["data/demo_0/obs/agentview_rgb"][()]
        del f["data/demo_0/obs/agentview_rgb"]
        f["data/demo_0/obs/agentview_rgb"] = img.astype(np.float32)
    with pytest.raises(LiberoFormatError, match="agentview_rgb' has dtype float32, expected uint8"):
        convert_libero(path, tmp_path / "ds", progress=False)


def test_no_demos_and_mixed_sizes(tmp_path: Path) -> None:
    empty = tmp_path / "empty_demo.hdf5"
    with h5py.File(empty, "w") as f:
        f.create_group("data")
    with pytest.raises(LiberoFormatError, match=r"empty_demo\.hdf5: group 'data' has no demo_<i> groups"):
        convert_libero(empty, tmp_path / "ds", progress=False)

    a, b = tmp_path / "a_demo.hdf5", tmp_path / "b_demo.hdf5"
    write_libero_file(a, [3])
    write_libero_file(b, [3])
    with h5py.File(b, "a") as f:
        del f["data/demo_0/obs/agentview_rgb"]
        f["data/demo_0/obs/agentview_rgb"] = np.zeros((3, 16, 16, 3), np.uint8)
    with pytest.raises(LiberoFormatError, match=r"b_demo\.hdf5: 'data/demo_0' .* images are 16x16 .*image_size"):
        convert_libero([a, b], tmp_path / "ds", progress=False)
    ds = DatasetReader(convert_libero([a, b], tmp_path / "ds", progress=False, image_size=24))
    assert ds.features[AGENT]["shape"] == [24, 24, 3]


def test_nan_values_name_the_demo(tmp_path: Path) -> None:
    path = tmp_path / "task_demo.hdf5"
    write_libero_file(path, [3, 4])
    with h5py.File(path, "a") as f:
        f["data/demo_1/actions"][2, 0] = np.nan
    with pytest.raises(LiberoFormatError, match=r"'data/demo_1' action has NaN/inf values \(first at frame 2\)"):
        convert_libero(path, tmp_path / "ds", progress=False)


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "task_demo.hdf5"
    write_libero_file(path, [3])
    convert_libero(path, tmp_path / "ds", progress=False)
    with pytest.raises(DataError, match="pass overwrite=True"):
        convert_libero(path, tmp_path / "ds", progress=False)
    assert DatasetReader(convert_libero(path, tmp_path / "ds", progress=False, overwrite=True)).num_episodes == 1
