"""Fast render settings: visual meshes are simplified (a little), colliding ones and the physics
are not; in a real LIBERO env the settings hold after every (hard) reset."""

from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest

from mode_policy.envs.rendering import FAST_MESH_CELL, _cluster_mesh, setup_headless_rendering

setup_headless_rendering()

needs_libero = pytest.mark.skipif(importlib.util.find_spec("libero") is None, reason="`libero` is not installed")


def _sphere(radius: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A latitude-longitude sphere: vertices (V, 3), faces (F, 3) (outward winding)."""
    theta = np.linspace(0, np.pi, n + 1)[1:-1]
    phi = np.linspace(0, 2 * np.pi, 2 * n, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    vert = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], -1).reshape(-1, 3)
    vert = np.vstack([vert, [[0, 0, 1], [0, 0, -1]]]) * radius
    rows, cols = len(theta), len(phi)
    idx = lambda i, j: i * cols + j % cols  # noqa: E731
    faces = []
    for i in range(rows - 1):
        for j in range(cols):
            faces += [[idx(i, j), idx(i + 1, j), idx(i + 1, j + 1)], [idx(i, j), idx(i + 1, j + 1), idx(i, j + 1)]]
    top, bottom = len(vert) - 2, len(vert) - 1
    for j in range(cols):
        faces += [[top, idx(0, j), idx(0, j + 1)], [bottom, idx(rows - 1, j + 1), idx(rows - 1, j)]]
    return vert, np.array(faces)


def test_clustering_keeps_the_shape_within_a_cell() -> None:
    vert, face = _sphere(0.04, 60)
    new_vert, new_face, kept = _cluster_mesh(vert, face, FAST_MESH_CELL)
    assert len(new_face) < len(face) / 3 and len(new_vert) < len(vert) / 3
    # every merged vertex lies within one cell of the surface; faces stay non-degenerate
    np.testing.assert_allclose(np.linalg.norm(new_vert, axis=1), 0.04, atol=FAST_MESH_CELL * np.sqrt(3))
    assert np.all((new_face[:, 0] != new_face[:, 1]) & (new_face[:, 1] != new_face[:, 2]))
    assert kept.dtype.kind == "i" and np.all(np.diff(kept) > 0) and kept.max() < len(face)


def _model_xml(vert: np.ndarray, face: np.ndarray) -> str:
    v = " ".join(f"{x:.6f}" for x in vert.ravel())
    f = " ".join(str(i) for i in face.ravel())
    return f"""
<mujoco>
  <asset>
    <mesh name="ball_visual" vertex="{v}" face="{f}"/>
    <mesh name="ball_collision" vertex="{v}" face="{f}"/>
    <material name="shiny" reflectance="0.5"/>
  </asset>
  <worldbody>
    <light pos="0 0 2" castshadow="true"/>
    <geom type="plane" size="1 1 0.1" material="shiny"/>
    <body pos="0 0 0.3">
      <freejoint/>
      <geom type="mesh" mesh="ball_collision" group="0"/>
      <geom type="mesh" mesh="ball_visual" contype="0" conaffinity="0" group="1"/>
    </body>
    <body pos="0.03 0.01 0.45">
      <freejoint/>
      <geom type="mesh" mesh="ball_collision" group="0"/>
    </body>
  </worldbody>
</mujoco>"""


def test_only_visual_meshes_change_and_the_physics_does_not() -> None:
    import mujoco

    from mode_policy.envs.rendering import fast_render_model

    vert, face = _sphere(0.04, 40)
    xml = _model_xml(vert, face)
    plain, fast = mujoco.MjModel.from_xml_string(xml), mujoco.MjModel.from_xml_string(xml)
    fast_render_model(fast, size=64)
    visual = mujoco.mj_name2id(fast, mujoco.mjtObj.mjOBJ_MESH, "ball_visual")
    collision = mujoco.mj_name2id(fast, mujoco.mjtObj.mjOBJ_MESH, "ball_collision")
    assert fast.mesh_facenum[visual] < plain.mesh_facenum[visual] / 2
    assert fast.mesh_facenum[collision] == plain.mesh_facenum[collision]
    assert fast.vis.quality.offsamples == 0 and fast.vis.global_.offwidth == 64
    assert not fast.mat_reflectance.any() and not fast.light_castshadow.any()
    np.testing.assert_array_equal(fast.body_inertia, plain.body_inertia)
    # the balls fall and collide: the same trajectory to the last bit
    data = [mujoco.MjData(plain), mujoco.MjData(fast)]
    for _ in range(400):
        mujoco.mj_step(plain, data[0])
        mujoco.mj_step(fast, data[1])
    assert data[0].ncon > 0
    np.testing.assert_array_equal(data[0].qpos, data[1].qpos)


@needs_libero
def test_settings_hold_after_hard_resets() -> None:
    from mode_policy.envs.libero import import_libero, load_suite, make_libero_env

    lib = import_libero()
    task = load_suite(lib, "libero_object").get_task(0)
    bddl = Path(lib.get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
    with contextlib.redirect_stdout(io.StringIO()):
        env = make_libero_env(lib, bddl, ["agentview"], 32, 50)
    try:
        models = []
        for _ in range(2):
            obs = env.reset()  # hard reset: a newly compiled model and rendering context
            model = env.sim.model._model
            models.append(model)
            assert model.vis.quality.offsamples == 0 and model.vis.global_.offwidth == 32
            assert not model.mat_reflectance.any()
            assert obs["agentview_image"].shape == (32, 32, 3) and obs["agentview_image"].std() > 5
        assert models[0] is not models[1]
        plain = lib.ControlEnv  # a model compiled without the settings, for its triangle count
        with contextlib.redirect_stdout(io.StringIO()):
            reference = plain(bddl_file_name=str(bddl), use_camera_obs=False, has_renderer=False,
                              has_offscreen_renderer=False)  # fmt: skip
        try:
            full = int(reference.sim.model._model.mesh_facenum.sum())
        finally:
            reference.close()
        assert int(models[1].mesh_facenum.sum()) < 0.6 * full
    finally:
        env.close()
