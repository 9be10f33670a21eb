"""Headless (offscreen) rendering set-up for the MuJoCo simulators (Meta-World, LIBERO).

mujoco picks its OpenGL backend once, from ``MUJOCO_GL``, when it is first imported
(robosuite, under LIBERO, does the same). :func:`setup_headless_rendering` must therefore
run before anything imports mujoco: the evaluators call it before importing their
simulator, and entry points that render (the CLI, demonstration generation, tests)
call it before importing :mod:`mode_policy.envs.metaworld`. Importing a module of
this package never changes the environment.
"""

from __future__ import annotations

import os
import sys

HEADLESS_BACKENDS = ("egl", "osmesa")


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
