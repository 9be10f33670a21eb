"""LIBERO evaluation: observation mapping (same as the converter), config handling, and a short
real rollout in the simulator (skipped when the `libero` package is not installed)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from mode_policy.data.convert_libero import libero_image_transform
from mode_policy.envs import libero_env
from mode_policy.envs.libero_env import (
    CAMERAS,
    INSTALL_HINT,
    SUITE_MAX_STEPS,
    evaluate_libero,
    format_libero_results,
    import_libero,
    libero_observation,
    libero_state,
    quat2axisangle,
)

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _libero_available() -> bool:
    try:
        import_libero()
    except Exception:  # noqa: BLE001 - missing package, missing dependency, broken install
        return False
    return True


needs_libero = pytest.mark.skipif(
    importlib.util.find_spec("libero") is None or not _libero_available(),
    reason=f"the `libero` package is not importable (install it with {INSTALL_HINT})",
)


class RecordingPolicy:
    """Scripted policy: records every batch it is given and returns a fixed small action."""

    def __init__(self, action: np.ndarray) -> None:
        self.action = torch.as_tensor(action, dtype=torch.float32)
        self.batches: list[dict] = []
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def select_action(self, batch: dict) -> torch.Tensor:
        self.batches.append(batch)
        return self.action.expand(len(batch["task"]), -1).clone()


# ---------------------------------------------------------------------------------- pure mapping


def test_quat2axisangle_matches_robosuite_formula() -> None:
    angle, axis = 0.7, np.array([0.2, -0.5, 0.84])
    axis = axis / np.linalg.norm(axis)
    quat = np.r_[axis * np.sin(angle / 2), np.cos(angle / 2)]  # (x, y, z, w)
    np.testing.assert_allclose(quat2axisangle(quat), axis * angle, atol=1e-12)
    np.testing.assert_array_equal(quat2axisangle(np.array([0.0, 0.0, 0.0, 1.0])), np.zeros(3))
    rs = pytest.importorskip("robosuite.utils.transform_utils", reason="robosuite not installed")
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        np.testing.assert_allclose(quat2axisangle(q), rs.quat2axisangle(q.copy()), atol=1e-12)


def test_observation_mapping_matches_converter() -> None:
    rng = np.random.default_rng(0)
    raw = []
    for _ in range(3):
        q = rng.normal(size=4)
        raw.append({
            "robot0_eef_pos": rng.normal(size=3),
            "robot0_eef_quat": q / np.linalg.norm(q),
            "robot0_gripper_qpos": rng.normal(size=2),
            "agentview_image": rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8),
            "robot0_eye_in_hand_image": rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8),
        })
    batch = libero_observation(raw, "open the drawer", list(CAMERAS), None)
    assert batch["task"] == ["open the drawer"] * 3
    state = batch["observation.state"]
    assert state.shape == (3, 8) and state.dtype == torch.float32
    for i, obs in enumerate(raw):
        want = np.r_[obs["robot0_eef_pos"], quat2axisangle(obs["robot0_eef_quat"]), obs["robot0_gripper_qpos"]]
        np.testing.assert_allclose(state[i].numpy(), want.astype(np.float32))
        np.testing.assert_allclose(libero_state(obs), want.astype(np.float32))
        for key, camera in CAMERAS.items():
            img = batch[key][i]  # (3, H, W) in [0, 1]
            want_img = libero_image_transform(obs[f"{camera}_image"])  # the converter's orientation
            np.testing.assert_allclose(img.permute(1, 2, 0).numpy() * 255, want_img, atol=1e-3)
    small = libero_observation(raw, "x", ["observation.images.wrist"], 8)
    assert small["observation.images.wrist"].shape == (3, 3, 8, 8)
    assert "observation.images.agentview" not in small


def test_suite_step_limits() -> None:
    assert SUITE_MAX_STEPS == {
        "libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400,
    }


def test_missing_package_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "libero" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'mode-policy\[libero\]'"):
        import_libero()


def test_unknown_camera_key_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown LIBERO camera key"):
        evaluate_libero(RecordingPolicy(np.zeros(7)), "libero_10", image_keys=["observation.images.top"])


def test_config_prompt_never_reached(tmp_path: Path) -> None:
    """An official-style `libero` that input()s when its config is missing: the prepared
    config (and the stdin guard) must keep the import from ever waiting on stdin."""
    pkg = tmp_path / "fake" / "libero" / "libero"
    (pkg / "envs").mkdir(parents=True)
    (pkg / "bddl_files").mkdir()
    (pkg.parent / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        import os, yaml
        path = os.environ.get("LIBERO_CONFIG_PATH", os.path.expanduser("~/.libero"))
        file = os.path.join(path, "config.yaml")
        if not os.path.exists(file):
            input("Do you want to specify a custom path for the dataset folder? (Y/N): ")
        config = yaml.safe_load(open(file))
        benchmark = object()
        def get_libero_path(key):
            return config[key]
    """))
    (pkg / "envs" / "__init__.py").write_text("OffScreenRenderEnv = object\n")
    code = textwrap.dedent("""
        import json
        from mode_policy.envs.libero_env import import_libero
        lib = import_libero()
        keys = ("benchmark_root", "bddl_files", "init_states", "assets")
        print(json.dumps({k: lib.get_libero_path(k) for k in keys}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "LIBERO_CONFIG_PATH"}
    env |= {"HOME": str(tmp_path / "home"), "PYTHONPATH": os.pathsep.join([str(tmp_path / "fake"), SRC])}
    pytest.importorskip("yaml")
    proc = subprocess.run([sys.executable, "-c", code], env=env, stdin=subprocess.PIPE, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    paths = json.loads(proc.stdout.strip().splitlines()[-1])
    assert paths["benchmark_root"] == str(pkg)
    assert paths["bddl_files"] == str(pkg / "bddl_files")
    assert paths["init_states"] == str(pkg / "init_files")


# ---------------------------------------------------------------------------------- real simulator


@needs_libero
def test_real_rollout_images_state_video(tmp_path: Path) -> None:
    """One short rollout of libero_10 task 0 with both cameras: the batch has the converter's
    names, shapes and orientation, and a video is written."""
    policy = RecordingPolicy(np.array([0.0, 0.0, 0.2, 0.0, 0.0, 0.0, -1.0]))
    result = evaluate_libero(
        policy, "libero_10", n_rollouts_per_task=1, max_steps=6, num_settle_steps=2, tasks=[0],
        image_keys=list(CAMERAS), image_size=64, video_dir=tmp_path / "videos", progress=False,
    )
    (task,) = result["per_task"]
    assert task["task_id"] == 0 and task["n_rollouts"] == 1
    assert task["instruction"] == "put both the alphabet soup and the tomato sauce in the basket"
    assert task["successes"] == 0 and task["episode_lengths"] == [6]
    assert result["max_steps"] == 6 and result["env_steps"] == 2 + 6
    assert policy.resets == 1 and len(policy.batches) == 6
    first, last = policy.batches[0], policy.batches[-1]
    assert first["observation.state"].shape == (1, 8)
    for key in CAMERAS:
        assert first[key].shape == (1, 3, 64, 64) and first[key].dtype == torch.float32
        assert 0.0 <= float(first[key].min()) and float(first[key].max()) <= 1.0
    # the arm moved up (+z action), and the state's z follows
    assert float(last["observation.state"][0, 2]) > float(first["observation.state"][0, 2])
    videos = sorted(p.name for p in (tmp_path / "videos").iterdir())
    assert videos == ["libero_10_task00_rollout00_failure.mp4"]
    assert "mean success rate 0.000 (0/1)" in format_libero_results(result)


@needs_libero
def test_real_rollout_state_only() -> None:
    """Without cameras the env runs with no renderer; two envs step in lockstep."""
    policy = RecordingPolicy(np.zeros(7))
    result = evaluate_libero(policy, "libero_goal", n_rollouts_per_task=2, max_steps=3, num_settle_steps=1,
                             tasks=[1], progress=False)
    (task,) = result["per_task"]
    assert task["episode_lengths"] == [3, 3] and result["env_steps"] == 2 * (1 + 3)
    assert [sorted(b) for b in policy.batches] == [["observation.state", "task"]] * 3
    assert policy.batches[0]["observation.state"].shape == (2, 8)
    # two different initial states -> two different starting states
    assert not torch.equal(policy.batches[0]["observation.state"][0], policy.batches[0]["observation.state"][1])


@needs_libero
def test_task_index_out_of_range() -> None:
    with pytest.raises(ValueError, match="out of range: libero_10 has 10 tasks"):
        evaluate_libero(RecordingPolicy(np.zeros(7)), "libero_10", tasks=[10], progress=False)
    with pytest.raises(ValueError, match="unknown LIBERO suite 'libero_11'"):
        evaluate_libero(RecordingPolicy(np.zeros(7)), "libero_11", progress=False)
    assert libero_env.SUITE_MAX_STEPS["libero_10"] == 520
