"""Headless rendering set-up: nothing is configured at import time, the set-up fills in only
what the user left unset, and it must (and can) run before mujoco is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

NO_SIMULATOR_IMPORTS = """
import mode_policy.envs.rendering, mode_policy.envs.libero, mode_policy.envs.calvin
import mode_policy.evaluation.metaworld, mode_policy.evaluation.libero, mode_policy.evaluation.calvin
"""


def _run(code: str, **env_vars: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")} | env_vars
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the headless default is for Linux")
def test_imports_change_nothing_and_setup_fills_in_unset_variables() -> None:
    out = _run(
        NO_SIMULATOR_IMPORTS
        + """
import json, os, sys
assert "mujoco" not in sys.modules  # no module of the package imports it before it is used
before = {k: os.environ.get(k) for k in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
from mode_policy.envs.rendering import setup_headless_rendering
returned = setup_headless_rendering()
after = {k: os.environ.get(k) for k in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
print(json.dumps({"before": before, "returned": returned, "after": after}))
"""
    )
    assert out["before"] == {"MUJOCO_GL": None, "PYOPENGL_PLATFORM": None}
    assert out["returned"] == "egl" and out["after"] == {"MUJOCO_GL": "egl", "PYOPENGL_PLATFORM": "egl"}


def test_user_choice_is_kept_and_mujoco_uses_it() -> None:
    out = _run(
        """
import json, os
from mode_policy.envs.rendering import mujoco_gl_backend, setup_headless_rendering
first = setup_headless_rendering()
import mujoco
print(json.dumps({"first": first, "env": os.environ.get("PYOPENGL_PLATFORM"), "mujoco": mujoco_gl_backend()}))
""",
        MUJOCO_GL="glfw",
    )
    assert out == {"first": "glfw", "env": None, "mujoco": "glfw"}


def test_after_mujoco_is_imported_its_backend_is_reported_and_nothing_changes() -> None:
    out = _run(
        NO_SIMULATOR_IMPORTS
        + "import mode_policy.envs.metaworld\n"
        + """
import json, os
from mode_policy.envs.rendering import setup_headless_rendering
print(json.dumps({"returned": setup_headless_rendering(), "env": os.environ.get("MUJOCO_GL")}))
"""
    )
    assert out == {"returned": "glfw", "env": None}  # too late: mujoco chose its default at import


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="EGL is the Linux headless backend")
def test_setup_then_metaworld_renders_without_a_display() -> None:
    out = _run(
        """
import json
from mode_policy.envs.rendering import setup_headless_rendering
setup_headless_rendering()
from mode_policy.envs.metaworld import MetaWorldEnv, demo_seed
env = MetaWorldEnv("reach-v3", seed=demo_seed("reach-v3", 0))
image = env.render("corner2", 32)
env.close()
print(json.dumps({"shape": list(image.shape), "std": float(image.std())}))
""",
        DISPLAY="",
    )
    assert out["shape"] == [32, 32, 3] and out["std"] > 5
