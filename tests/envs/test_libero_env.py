"""LIBERO env wrapper: observation mapping (same as the converter), import and config handling.
The rollouts are tested in tests/evaluation/test_eval_libero.py."""

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

from mode_policy.data.images import libero_image_transform
from mode_policy.envs.libero import CAMERAS, import_libero, libero_observation, libero_state, quat2axisangle
from mode_policy.errors import SimulatorError

SRC = str(Path(__file__).resolve().parents[2] / "src")


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
        raw.append(
            {
                "robot0_eef_pos": rng.normal(size=3),
                "robot0_eef_quat": q / np.linalg.norm(q),
                "robot0_gripper_qpos": rng.normal(size=2),
                "agentview_image": rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8),
                "robot0_eye_in_hand_image": rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8),
            }
        )
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


def test_missing_package_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "libero" else real(name, *a))
    with pytest.raises(SimulatorError, match=r"pip install 'mode-policy\[libero\]'"):
        import_libero()


def test_config_prompt_never_reached(tmp_path: Path) -> None:
    """An official-style `libero` that input()s when its config is missing: the prepared
    config (and the stdin guard) must keep the import from ever waiting on stdin."""
    pkg = tmp_path / "fake" / "libero" / "libero"
    (pkg / "envs").mkdir(parents=True)
    (pkg / "bddl_files").mkdir()
    (pkg.parent / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text(
        textwrap.dedent("""
        import os, yaml
        path = os.environ.get("LIBERO_CONFIG_PATH", os.path.expanduser("~/.libero"))
        file = os.path.join(path, "config.yaml")
        if not os.path.exists(file):
            input("Do you want to specify a custom path for the dataset folder? (Y/N): ")
        config = yaml.safe_load(open(file))
        benchmark = object()
        def get_libero_path(key):
            return config[key]
    """)
    )
    (pkg / "envs" / "__init__.py").write_text("OffScreenRenderEnv = object\n")
    code = textwrap.dedent("""
        import json
        from mode_policy.envs.libero import import_libero
        lib = import_libero()
        keys = ("benchmark_root", "bddl_files", "init_states", "assets")
        print(json.dumps({k: lib.get_libero_path(k) for k in keys}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "LIBERO_CONFIG_PATH"}
    env |= {"HOME": str(tmp_path / "home"), "PYTHONPATH": os.pathsep.join([str(tmp_path / "fake"), SRC])}
    pytest.importorskip("yaml")
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, stdin=subprocess.PIPE, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    paths = json.loads(proc.stdout.strip().splitlines()[-1])
    assert paths["benchmark_root"] == str(pkg)
    assert paths["bddl_files"] == str(pkg / "bddl_files")
    assert paths["init_states"] == str(pkg / "init_files")
