"""Check an observation from the wire against the policy's config before it reaches the model.

An observation is a map with a leading batch dimension B on every array, as
:meth:`MoDEPolicy.predict_action_chunk` takes it:

* ``observation.state``: float (B, S) or (B, n_obs, S), when the policy has a state;
* ``observation.images.<camera>`` for each of the policy's cameras: uint8
  (B, [n_obs,] H, W, 3) or float (B, [n_obs,] 3, H, W);
* the goal: ``goal`` float (B, goal_dim), or ``task``: B instruction strings (one
  string for B = 1) when the policy has a goal encoder.

Every problem raises :class:`~mode_policy.errors.DataError` naming the key and
what is wrong (unknown key, shape, dtype, NaN or inf, unknown instruction).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..constants import GOAL_KEY, STATE_KEY, TASK_KEY
from ..errors import DataError
from ..model.config import MoDEConfig


@dataclass
class Observation:
    """A validated observation: float32 / uint8 arrays with the observation-history
    axis made explicit (state (B, n_obs, S), images (B, n_obs, ...)), and the goal."""

    arrays: dict[str, np.ndarray]
    tasks: list[str] | None
    rows: int

    def signature(self) -> tuple:
        """Observations with equal signatures can be stacked into one forward."""
        shapes = tuple(sorted((k, a.dtype.str, a.shape[1:]) for k, a in self.arrays.items()))
        return shapes, self.tasks is not None


def _array(obs: Mapping[str, Any], key: str) -> np.ndarray:
    value = obs[key]
    if not isinstance(value, np.ndarray):
        raise DataError(f"{key} must be a numpy array, got {type(value).__name__}")
    return value


def _check_finite(key: str, value: np.ndarray) -> None:
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        bad = "NaN" if np.isnan(value).any() else "inf"
        row = int(np.argwhere(~np.isfinite(value))[0][0])
        raise DataError(f"{key} contains {bad} (first at batch row {row})")


def _state(key: str, value: np.ndarray, cfg: MoDEConfig) -> np.ndarray:
    if value.dtype.kind != "f":
        raise DataError(f"{key} has dtype {value.dtype}, expected a float array")
    given = tuple(value.shape)
    if value.ndim == 2 and cfg.n_obs_steps == 1:
        value = value[:, None]  # (B, 1, S)
    if value.ndim != 3 or value.shape[1:] != (cfg.n_obs_steps, cfg.state_dim):
        want = f"(B, {cfg.n_obs_steps}, {cfg.state_dim})"
        want = f"(B, {cfg.state_dim}) or {want}" if cfg.n_obs_steps == 1 else want
        raise DataError(f"{key} has shape {given}, expected {want}")
    _check_finite(key, value)
    return value.astype(np.float32, copy=False)


def _image(key: str, value: np.ndarray, cfg: MoDEConfig) -> np.ndarray:
    given = tuple(value.shape)
    if value.ndim == 4 and cfg.n_obs_steps == 1:
        value = value[:, None]  # (B, 1, ...)
    channels_last = value.dtype == np.uint8
    if value.dtype != np.uint8 and value.dtype.kind != "f":
        raise DataError(f"{key} has dtype {value.dtype}, expected uint8 (H, W, 3) or float (3, H, W) images")
    ok_shape = (
        value.ndim == 5
        and value.shape[1] == cfg.n_obs_steps
        and (value.shape[-1] == 3 if channels_last else value.shape[2] == 3)
    )
    if not ok_shape:
        layout = "H, W, 3" if channels_last else "3, H, W"
        raise DataError(f"{key} has shape {given}, expected (B, {cfg.n_obs_steps}, {layout})")
    _check_finite(key, value)
    return value if channels_last else value.astype(np.float32, copy=False)


def _tasks(value: Any, known: frozenset[str] | None) -> list[str]:
    tasks = [value] if isinstance(value, str) else value
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
        raise DataError(f"{TASK_KEY} must be a string or a non-empty list of strings")
    if known is not None:
        unknown = sorted(set(tasks) - known)
        if unknown:
            raise DataError(f"{TASK_KEY} {unknown[0]!r} is not an instruction this policy knows")
    return tasks


def validate_observation(
    obs: Any,
    cfg: MoDEConfig,
    has_goal_encoder: bool,
    known_tasks: frozenset[str] | None = None,
    max_rows: int = 256,
) -> Observation:
    """The checked :class:`Observation` of ``obs``; DataError naming the first problem.
    ``known_tasks``: the instructions a learned task encoder has (None: any string)."""
    if not isinstance(obs, Mapping):
        raise DataError(f"obs must be a map of feature names to arrays, got {type(obs).__name__}")
    allowed = ([STATE_KEY] if cfg.state_dim > 0 else []) + list(cfg.image_keys) + [GOAL_KEY]
    allowed += [TASK_KEY] if has_goal_encoder else []
    unknown = [k for k in obs if k not in allowed]
    if unknown:
        raise DataError(f"unknown observation key {unknown[0]!r} (this policy takes: {', '.join(allowed)})")
    missing = [k for k in allowed if k not in (GOAL_KEY, TASK_KEY) and k not in obs]
    if missing:
        raise DataError(f"observation lacks {missing[0]!r}")
    if (GOAL_KEY in obs) == (TASK_KEY in obs):
        choice = f"{GOAL_KEY!r} (B, {cfg.goal_dim})" + (f" or {TASK_KEY!r} strings" if has_goal_encoder else "")
        raise DataError(f"observation needs exactly one goal: {choice}")
    arrays: dict[str, np.ndarray] = {}
    if cfg.state_dim > 0:
        arrays[STATE_KEY] = _state(STATE_KEY, _array(obs, STATE_KEY), cfg)
    for key in cfg.image_keys:
        arrays[key] = _image(key, _array(obs, key), cfg)
    tasks = None
    if GOAL_KEY in obs:
        goal = _array(obs, GOAL_KEY)
        if goal.dtype.kind != "f" or goal.ndim != 2 or goal.shape[1] != cfg.goal_dim:
            raise DataError(
                f"{GOAL_KEY} has shape {tuple(goal.shape)} and dtype {goal.dtype}, expected float (B, {cfg.goal_dim})"
            )
        _check_finite(GOAL_KEY, goal)
        arrays[GOAL_KEY] = goal.astype(np.float32, copy=False)
    else:
        tasks = _tasks(obs[TASK_KEY], known_tasks)
    rows = {k: a.shape[0] for k, a in arrays.items()}
    if tasks is not None:
        rows[TASK_KEY] = len(tasks)
    if len(set(rows.values())) != 1:
        raise DataError(f"batch sizes differ between keys: {rows}")
    n = next(iter(rows.values()))
    if not 1 <= n <= max_rows:
        raise DataError(f"batch size {n}: the server takes 1 to {max_rows} rows per request")
    return Observation(arrays, tasks, n)
