"""Headless (offscreen) rendering set-up for the MuJoCo simulators (Meta-World, LIBERO).

mujoco picks its OpenGL backend once, from ``MUJOCO_GL``, when it is first imported
(robosuite, under LIBERO, does the same). :func:`setup_headless_rendering` must therefore
run before anything imports mujoco: the evaluators call it before importing their
simulator, and entry points that render (the CLI, demonstration generation, tests)
call it before importing :mod:`mode_policy.envs.metaworld`. Importing a module of
this package never changes the environment.

Fast rendering of a compiled MuJoCo model (:func:`fast_render_model`, used for LIBERO, whose
scenes hold ~300k visual triangles): on a CPU (Mesa llvmpipe) a 128 px frame costs about the
same at 32 px, because vertex processing dominates, not pixels. So besides multisampling and
reflections, the visual-only meshes (scanned objects and robot links of 10k-66k triangles, a
few dozen pixels wide on screen) are simplified by vertex clustering on a 5 mm grid
(:func:`simplify_visual_meshes`). Colliding geoms, masses and inertias are untouched: the
physics is exactly the same.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

HEADLESS_BACKENDS = ("egl", "osmesa")
#: Grid (metres) on which :func:`simplify_visual_meshes` merges the vertices of visual meshes.
FAST_MESH_CELL = 0.005


def mujoco_gl_backend() -> str | None:
    """The backend an already imported mujoco uses (``"egl"``, ``"glfw"``, ...); None before
    mujoco is imported."""
    gl_context = sys.modules.get("mujoco.gl_context")
    if gl_context is None:
        return None
    context = getattr(gl_context, "GLContext", None)
    return context.__module__.rsplit(".", 1)[-1] if context is not None else "disabled"


def setup_headless_rendering(backend: str = "egl") -> str:
    """Make mujoco render offscreen without a display: on Linux, set ``MUJOCO_GL`` to
    ``backend`` (EGL by default, which works on CPUs and GPUs) and ``PYOPENGL_PLATFORM`` to
    match, each only when the user has not set it.

    Idempotent. Once mujoco is imported its choice is final: nothing is changed then, and
    the backend it uses is returned. Otherwise returns the ``MUJOCO_GL`` now in effect
    ("" where none is set, e.g. off Linux: mujoco's own default)."""
    chosen = mujoco_gl_backend()
    if chosen is not None:
        return chosen
    if sys.platform.startswith("linux"):
        os.environ.setdefault("MUJOCO_GL", backend)
        gl = os.environ["MUJOCO_GL"].strip().lower()
        if gl in HEADLESS_BACKENDS:
            os.environ.setdefault("PYOPENGL_PLATFORM", gl)
    return os.environ.get("MUJOCO_GL", "")


# --------------------------------------------------------------------------------------
# Fast rendering of a compiled model (used for LIBERO)
# --------------------------------------------------------------------------------------

_SIMPLIFIED: dict[tuple[Any, ...], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _cluster_mesh(vert: np.ndarray, face: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertex clustering: vertices (V, 3) in one ``cell``-sized grid cube merge into their mean;
    faces (F, 3) that collapse are dropped. Returns new vertices (V', 3) float32, the kept faces
    (F', 3) re-indexed, and the indices (F',) of the kept faces in ``face`` (so per-corner
    normals and texture coordinates of a kept face stay those of the original face)."""
    keys = np.floor(vert / cell).astype(np.int64)  # (V, 3)
    _, cluster = np.unique(keys, axis=0, return_inverse=True)
    cluster = cluster.reshape(-1)  # (V,)
    n = int(cluster.max()) + 1
    merged = np.zeros((n, 3))
    np.add.at(merged, cluster, vert)
    merged /= np.bincount(cluster, minlength=n)[:, None]
    new_face = cluster[face]  # (F, 3)
    alive = (new_face[:, 0] != new_face[:, 1]) & (new_face[:, 1] != new_face[:, 2]) & (new_face[:, 0] != new_face[:, 2])
    # a face and its duplicate (same corners after merging) would z-fight: keep the first
    kept = np.flatnonzero(alive)
    _, first = np.unique(np.sort(new_face[kept], axis=1), axis=0, return_index=True)
    kept = kept[np.sort(first)]
    return merged.astype(np.float32), new_face[kept].astype(np.int32), kept


def simplify_visual_meshes(model: Any, cell: float = FAST_MESH_CELL) -> tuple[int, int]:
    """Simplify, in place, every mesh of the compiled ``model`` (``mujoco.MjModel``) that only
    visual geoms use (no geom using it collides), by vertex clustering on a ``cell`` grid.

    Must run before a rendering context is made for ``model`` (contexts upload meshes when
    made). Colliding meshes, masses and inertias (computed at compile time) are untouched, so
    the simulation is unchanged. Results are cached per mesh (name and size), so the hard
    resets of robosuite, which compile the model anew, cost a copy. Returns (triangles before,
    after) over all meshes."""
    import mujoco

    is_mesh = model.geom_type == mujoco.mjtGeom.mjGEOM_MESH
    collides = (model.geom_contype != 0) | (model.geom_conaffinity != 0)
    keep = set(model.geom_dataid[is_mesh & collides].tolist())
    used = set(model.geom_dataid[is_mesh].tolist())
    before = int(model.mesh_facenum.sum())
    for i in range(model.nmesh):
        if i in keep or i not in used:
            continue
        va, vn = int(model.mesh_vertadr[i]), int(model.mesh_vertnum[i])
        fa, fn = int(model.mesh_faceadr[i]), int(model.mesh_facenum[i])
        key = (mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_MESH, i), vn, fn, float(cell))
        if key not in _SIMPLIFIED:
            _SIMPLIFIED[key] = _cluster_mesh(model.mesh_vert[va : va + vn], model.mesh_face[fa : fa + fn], cell)
        vert, face, kept = _SIMPLIFIED[key]
        if len(face) == 0:  # a mesh smaller than one cell: leave it as it is
            continue
        facenormal = model.mesh_facenormal[fa : fa + fn][kept]
        facetexcoord = model.mesh_facetexcoord[fa : fa + fn][kept]
        model.mesh_vert[va : va + len(vert)] = vert
        model.mesh_vertnum[i] = len(vert)
        model.mesh_face[fa : fa + len(face)] = face
        model.mesh_facenormal[fa : fa + len(face)] = facenormal
        model.mesh_facetexcoord[fa : fa + len(face)] = facetexcoord
        model.mesh_facenum[i] = len(face)
    return before, int(model.mesh_facenum.sum())


def fast_render_model(model: Any, size: int | None = None, mesh_cell: float | None = FAST_MESH_CELL) -> None:
    """Render settings a policy does not need, turned off in the compiled ``model`` before any
    rendering context is made for it: no multisampling (``offsamples = 0``), no reflections
    (material reflectance 0), no shadows (no light casts one), an offscreen buffer of
    ``size`` px (instead of 640 x 480), and visual meshes simplified on a ``mesh_cell`` grid
    (:func:`simplify_visual_meshes`; ``None`` keeps them). Camera poses, materials, textures
    and lights are unchanged."""
    model.vis.quality.offsamples = 0
    model.mat_reflectance[:] = 0.0
    model.light_castshadow[:] = 0
    if size:
        model.vis.global_.offwidth = int(size)
        model.vis.global_.offheight = int(size)
    if mesh_cell:
        simplify_visual_meshes(model, mesh_cell)
