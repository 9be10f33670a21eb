"""What a policy observes, derived from its config: one schema for the policy's own input check
(:meth:`MoDEPolicy.check_inputs <mode_policy.policy.MoDEPolicy.check_inputs>`) and the server's
check of each request (:class:`~mode_policy.serving.PolicyServer`).

An observation is a map with a leading batch dimension B on every array:

* ``observation.state``: float (B, S) or (B, n_obs, S), when the policy has a state (a policy
  trained on a mixture takes a dataset's own width, or that padded with zeros to its own);
* ``observation.images.<camera>`` for each of the policy's cameras: uint8 or float images
  (B, [n_obs,] H, W, 3) or (B, [n_obs,] 3, H, W) (uint8 in [0, 255], float in [0, 1]); for a
  policy that takes image features (``config.image_features``), the camera's pooled feature
  vector, float (B, [n_obs,] F);
* the goal: ``goal`` float (B, goal_dim), or ``task``: one instruction string per row (a plain
  string for B = 1) when the policy has a goal encoder (a task embedding knows a fixed set);
* ``dataset`` (a policy trained on a mixture): the dataset's name, or one per row.

The rules are the same in both checks; they differ in what surrounds them:
:meth:`ObservationSchema.check_batch` takes a Python batch (tensors or numpy arrays; keys the
policy does not read pass through, a goal vector wins over task strings, a frame without the
history axis is allowed, as ``select_action`` takes it); :meth:`ObservationSchema.check_request`
takes what a client sent (numpy arrays only, no other keys, exactly one goal, at most
``max_rows`` rows). Every problem raises :class:`~mode_policy.errors.DataError` naming the key
and what was expected.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .constants import GOAL_KEY, STATE_KEY, TASK_KEY
from .errors import DataError
from .model.normalize import DATASET_KEY

__all__ = ["Observation", "ObservationSchema"]

SHOWN_TASKS = 20
"""Known instructions an error message lists."""


@dataclass
class Observation:
    """A request that passed :meth:`ObservationSchema.check_request`: float32 / uint8 numpy
    arrays with the history axis made explicit (state (B, n_obs, S), images (B, n_obs, ...)),
    the instructions (None: ``goal`` vectors) and the batch size."""

    arrays: dict[str, np.ndarray]
    tasks: list[str] | None
    rows: int
    prefix: np.ndarray | None = None
    """Real-time chunking: the actions (B, P, A) float32 the chunk must start from (None: none)."""
    delay: np.ndarray | None = None
    """The frozen actions of ``prefix`` per row (B,) int64."""

    def signature(self) -> tuple:
        """Observations with equal signatures can be stacked into one forward."""
        shapes = tuple(sorted((k, a.dtype.str, a.shape[1:]) for k, a in self.arrays.items()))
        return shapes, self.tasks is not None, None if self.prefix is None else self.prefix.shape[1:]


@dataclass(frozen=True)
class ObservationSchema:
    """The keys, shapes and dtypes a policy takes (see the module docstring)."""

    state_dim: int
    """Width of ``observation.state`` (0: no state); a mixture policy's widest."""
    goal_dim: int
    n_obs_steps: int = 1
    image_keys: tuple[str, ...] = ()
    image_size: int = 0
    """Side of the square training images (0: not known); informational (the encoders pool
    globally), named in error messages."""
    image_feature_dim: int = 0
    """Width F of the pooled features each camera key holds instead of images (0: images)."""
    takes_text: bool = False
    """Whether ``task`` strings are a goal (the policy has a goal encoder)."""
    known_tasks: frozenset[str] | None = None
    """The instructions a task embedding knows (None: any string)."""
    datasets: Mapping[str, int] = field(default_factory=dict)
    """A mixture policy's datasets: name -> state width (empty: one dataset)."""
    horizon: int = 0
    """Actions per chunk (a request's ``prefix`` holds at most as many; 0: not known, no prefix)."""
    action_dim: int = 0
    """Width of the actions (and of a request's ``prefix``)."""

    # ------------------------------------------------------------ building
    @classmethod
    def from_config(
        cls, cfg: Any, known_tasks: frozenset[str] | None = None, datasets: Mapping[str, int] | None = None
    ) -> ObservationSchema:
        """The schema of a policy with config ``cfg`` (a :class:`~mode_policy.model.config.MoDEConfig`
        or a dataset view's config). ``known_tasks`` default: the instructions of a ``task``
        goal encoder in the config; ``datasets``: a mixture policy's name -> state width."""
        spec = dict(cfg.goal_encoder or {})
        if known_tasks is None and spec.get("type") == "task" and "tasks" in spec:
            known_tasks = frozenset(spec["tasks"])
        return cls(
            state_dim=max(int(cfg.state_dim), 0),
            goal_dim=int(cfg.goal_dim),
            n_obs_steps=int(cfg.n_obs_steps),
            image_keys=tuple(cfg.image_keys),
            image_size=int(cfg.image_size),
            image_feature_dim=_image_feature_dim(cfg),
            takes_text=bool(spec),
            known_tasks=None if known_tasks is None else frozenset(known_tasks),
            datasets=dict(datasets or {}),
            horizon=int(getattr(cfg, "horizon", 0)),
            action_dim=int(getattr(cfg, "action_dim", 0)),
        )

    @classmethod
    def for_policy(cls, policy: Any) -> ObservationSchema:
        """The schema of ``policy`` (a :class:`~mode_policy.policy.MoDEPolicy`, or one dataset's view
        of it, :class:`~mode_policy.dataset_view.DatasetPolicy`): its config, its goal encoder's
        instructions and, for a mixture policy, its datasets' state widths."""
        normalizers = getattr(policy, "dataset_normalizers", None)  # a view has chosen its dataset
        datasets = {}
        if normalizers is not None:
            datasets = {name: normalizers.member(name).state_mean.numel() for name in normalizers.names}
        encoder = policy.goal_encoder
        tasks = getattr(encoder, "tasks", None)
        schema = cls.from_config(policy.config, frozenset(tasks) if tasks is not None else None, datasets)
        return dataclasses.replace(schema, takes_text=encoder is not None)

    # ------------------------------------------------------------ describing
    def features(self) -> dict[str, Any]:
        """The schema as plain data (the server's metadata)."""
        return {
            "state": [self.n_obs_steps, self.state_dim] if self.state_dim > 0 else None,
            "images": list(self.image_keys),
            "image_size": self.image_size or None,
            "image_features": self.image_feature_dim or None,
            "goal_dim": self.goal_dim,
            "task": self.takes_text,
            "known_tasks": sorted(self.known_tasks) if self.known_tasks is not None else None,
        }

    def keys(self) -> list[str]:
        """The keys of a request, in order."""
        keys = ([STATE_KEY] if self.state_dim > 0 else []) + list(self.image_keys) + [GOAL_KEY]
        return keys + ([TASK_KEY] if self.takes_text else [])

    def _goal_choice(self) -> str:
        choice = f"{GOAL_KEY!r} (B, {self.goal_dim})"
        return choice + (f" or {TASK_KEY!r} strings (one instruction per row)" if self.takes_text else "")

    # ------------------------------------------------------------ checking
    def check_batch(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """``batch`` with the policy's arrays as tensors (numpy arrays converted) and ``task`` as a
        list; DataError naming the first problem. Other keys pass through unchecked."""
        if not isinstance(batch, Mapping):
            raise DataError(f"batch must be a map of feature names to arrays, got {type(batch).__name__}")
        out = dict(batch)
        sizes: dict[str, int] = {}
        state_low = self._dataset_state_width(out, sizes)
        if self.state_dim == 0 and isinstance(out.get(STATE_KEY), np.ndarray):
            out[STATE_KEY] = _tensor(out[STATE_KEY])  # not read here, but stacked in a history
        self._require_arrays(out, "batch")
        has_goal = GOAL_KEY in out
        if not has_goal and not (self.takes_text and TASK_KEY in out):
            hint = f" ({TASK_KEY!r} strings need a goal encoder; this policy has none)" if TASK_KEY in out else ""
            raise DataError(f"batch needs a goal: {self._goal_choice()}{hint}")
        for key, value in self._arrays(out, state_low, frames=True, wire=False).items():
            sizes[key] = value.shape[0]
            out[key] = _tensor(value)
        if TASK_KEY in out:
            out[TASK_KEY] = self._tasks(out[TASK_KEY], check_known=not has_goal and self.takes_text)
            sizes[TASK_KEY] = len(out[TASK_KEY])
        _same_rows(sizes)
        return out

    def check_request(self, obs: Any, max_rows: int = 256, prefix: Any = None, delay: Any = 0) -> Observation:
        """The :class:`Observation` of what a client sent (a map of numpy arrays and strings, for a
        schema of one dataset); DataError naming the first problem. ``prefix`` and ``delay``: a
        real-time chunking request's (see :func:`~mode_policy.model.guidance.check_prefix`)."""
        if not isinstance(obs, Mapping):
            raise DataError(f"obs must be a map of feature names to arrays, got {type(obs).__name__}")
        allowed = self.keys()
        unknown = [k for k in obs if k not in allowed]
        if unknown:
            raise DataError(f"unknown observation key {unknown[0]!r} (this policy takes: {', '.join(allowed)})")
        self._require_arrays(obs, "observation")
        if (GOAL_KEY in obs) == (TASK_KEY in obs):
            raise DataError(f"observation needs exactly one goal: {self._goal_choice()}")
        arrays = self._arrays(obs, self.state_dim, frames=self.n_obs_steps == 1, wire=True)
        for key in (STATE_KEY, *self.image_keys):
            if key in arrays and arrays[key].ndim < (3 if key == STATE_KEY or self.image_feature_dim else 5):
                arrays[key] = arrays[key][:, None]  # the history axis: (B, 1, ...)
        arrays = {k: a if a.dtype == np.uint8 else a.astype(np.float32, copy=False) for k, a in arrays.items()}
        tasks = self._tasks(obs[TASK_KEY], check_known=True) if TASK_KEY in obs else None
        sizes = {k: a.shape[0] for k, a in arrays.items()}
        if tasks is not None:
            sizes[TASK_KEY] = len(tasks)
        n = _same_rows(sizes)
        if not 1 <= n <= max_rows:
            raise DataError(f"batch size {n}: the server takes 1 to {max_rows} rows per request")
        if prefix is None:
            if not (delay is None or (type(delay) is int and delay == 0)):
                raise DataError("a delay needs the prefix the robot executes meanwhile ('prefix': (B, P, A))")
            return Observation(arrays, tasks, n)
        from .model.guidance import check_prefix

        delays = check_prefix(prefix, delay, n, self.horizon, self.action_dim, wire=True)
        return Observation(arrays, tasks, n, prefix.astype(np.float32, copy=False), delays)

    # ------------------------------------------------------------ the rules
    def _dataset_state_width(self, batch: Mapping[str, Any], sizes: dict[str, int]) -> int:
        """The narrowest state width the batch's dataset(s) allow (a mixture policy: the narrowest
        named dataset's; each row's own is checked where it is normalised); checks the ``dataset``
        key: a known name, or one per row."""
        if not self.datasets:
            return self.state_dim
        names = list(self.datasets)
        given = batch.get(DATASET_KEY)
        if given is None:
            if len(names) > 1:
                raise DataError(
                    f"this policy normalises each of its datasets ({', '.join(names)}) separately: name "
                    f"one, e.g. predict_action_chunk(batch, dataset={names[0]!r}) or batch[{DATASET_KEY!r}]"
                )
            given = names[0]
        chosen = [given] if isinstance(given, str) else given
        if not isinstance(chosen, (list, tuple)) or not chosen or not all(isinstance(n, str) for n in chosen):
            raise DataError(f"{DATASET_KEY} must be a dataset name or a list of names (one per batch row)")
        if not isinstance(given, str):
            sizes[DATASET_KEY] = len(chosen)
        unknown = [n for n in chosen if n not in self.datasets]
        if unknown:
            raise DataError(f"unknown dataset {unknown[0]!r}: this policy normalises {', '.join(names)}")
        return min(self.datasets[n] for n in chosen)

    def _require_arrays(self, obs: Mapping[str, Any], noun: str) -> None:
        if self.state_dim > 0 and STATE_KEY not in obs:
            raise DataError(f"{noun} lacks {STATE_KEY!r} (B, {self.state_dim})")
        what = f"(B, {self.image_feature_dim}) image features" if self.image_feature_dim else "(B, H, W, 3) images"
        for key in self.image_keys:
            if key not in obs:
                raise DataError(f"{noun} lacks camera {key!r} {what}")

    def _arrays(self, obs: Mapping[str, Any], state_low: int, frames: bool, wire: bool) -> dict[str, Any]:
        """The checked state, camera and goal arrays of ``obs`` (as given: numpy or tensors).
        ``frames``: a state or image without the history axis is allowed."""
        out: dict[str, Any] = {}
        if self.state_dim > 0:
            out[STATE_KEY] = self._state(obs[STATE_KEY], state_low, frames, wire)
        for key in self.image_keys:
            out[key] = self._image(key, obs[key], frames, wire)
        if GOAL_KEY in obs:
            out[GOAL_KEY] = self._goal(obs[GOAL_KEY], wire)
        return out

    def _state(self, value: Any, low: int, frames: bool, wire: bool) -> Any:
        shape, kind, dtype = _describe(STATE_KEY, value, wire)
        if kind != "f":
            raise DataError(f"{STATE_KEY} has dtype {dtype}, expected a float array")
        n_obs, high = self.n_obs_steps, self.state_dim
        width = str(high) if low == high else f"{low} to {high}"
        ok_width = len(shape) > 1 and low <= shape[-1] <= high
        ok_rank = (len(shape) == 3 and shape[1] == n_obs) or (len(shape) == 2 and (frames or n_obs == 1))
        if not (ok_width and ok_rank):
            want = f"(B, {n_obs}, {width})"
            if frames or n_obs == 1:
                want = f"(B, {width}) or {want}"
            padded = " (a dataset's own width, or padded with zeros to the policy's)" if low != high else ""
            raise DataError(f"{STATE_KEY} has shape {shape}, expected {want}{padded}")
        _check_finite(STATE_KEY, value)
        return value

    def _image(self, key: str, value: Any, frames: bool, wire: bool) -> Any:
        if self.image_feature_dim:
            return self._image_feature(key, value, frames, wire)
        shape, kind, dtype = _describe(key, value, wire)
        if kind not in ("u8", "f"):
            raise DataError(f"{key} has dtype {dtype}, expected uint8 [0, 255] or float [0, 1] images")
        n_obs = self.n_obs_steps
        step = shape[1:] if len(shape) == 4 and (frames or n_obs == 1) else shape[2:]
        ok_rank = (len(shape) == 5 and shape[1] == n_obs) or (len(shape) == 4 and (frames or n_obs == 1))
        if not (ok_rank and (step[0] == 3 or step[-1] == 3)):
            want = f"(B, {n_obs}, H, W, 3) or (B, {n_obs}, 3, H, W)"
            if frames or n_obs == 1:
                want = f"(B, H, W, 3), (B, 3, H, W), {want}"
            size = f" (trained at H = W = {self.image_size})" if self.image_size else ""
            raise DataError(f"{key} has shape {shape}, expected {want}{size}")
        _check_finite(key, value)
        return value

    def _image_feature(self, key: str, value: Any, frames: bool, wire: bool) -> Any:
        shape, kind, dtype = _describe(key, value, wire)
        n_obs, width = self.n_obs_steps, self.image_feature_dim
        ok_rank = (len(shape) == 3 and shape[1] == n_obs) or (len(shape) == 2 and (frames or n_obs == 1))
        if kind != "f" or not ok_rank or shape[-1] != width:
            want = f"(B, {n_obs}, {width})"
            if frames or n_obs == 1:
                want = f"(B, {width}) or {want}"
            raise DataError(f"{key} has shape {shape} ({dtype}), expected float image features {want}")
        _check_finite(key, value)
        return value

    def _goal(self, value: Any, wire: bool) -> Any:
        shape, kind, dtype = _describe(GOAL_KEY, value, wire)
        if kind != "f":
            raise DataError(f"{GOAL_KEY} has dtype {dtype}, expected a float array (B, {self.goal_dim})")
        if len(shape) != 2:
            raise DataError(f"{GOAL_KEY} has shape {shape}, expected (B, {self.goal_dim})")
        if shape[1] != self.goal_dim:
            raise DataError(
                f"{GOAL_KEY} has width {shape[1]} (shape {shape}), expected (B, {self.goal_dim}) (goal_dim)"
            )
        _check_finite(GOAL_KEY, value)
        return value

    def _tasks(self, value: Any, check_known: bool) -> list[str]:
        tasks = [value] if isinstance(value, str) else value
        if not isinstance(tasks, (list, tuple)) or not tasks or not all(isinstance(t, str) for t in tasks):
            raise DataError(
                f"{TASK_KEY} must be a string or a non-empty list of strings (one instruction per batch row), "
                f"got {type(value).__name__}"
            )
        if check_known and self.known_tasks is not None:
            unknown = [t for t in tasks if t not in self.known_tasks]
            if unknown:
                known = sorted(self.known_tasks)
                shown = ", ".join(repr(t) for t in known[:SHOWN_TASKS])
                more = f", ... ({len(known)} in all)" if len(known) > SHOWN_TASKS else ""
                raise DataError(f"{TASK_KEY}: unknown instruction {unknown[0]!r}; this policy knows {shown}{more}")
        return list(tasks)


# ---------------------------------------------------------------- arrays
def _image_feature_dim(cfg: Any) -> int:
    """The width of the pooled camera features a config's policy takes instead of images (0: images)."""
    if not getattr(cfg, "image_features", False):
        return 0
    from .official.spec import vision_feature_dim

    return vision_feature_dim(cfg.vision_depth, cfg.vision_width)


def _describe(key: str, value: Any, wire: bool) -> tuple[tuple[int, ...], str, str]:
    """(shape, kind, dtype name) of a numpy array or (unless ``wire``) a tensor; kind is 'f'
    (float), 'u8' (uint8), 'i' (other integers), 'b' (bool), 'c' (complex) or 'o' (other)."""
    if isinstance(value, np.ndarray):
        kind = value.dtype.kind
        kind = ("u8" if value.dtype == np.uint8 else "i") if kind in "ui" else kind if kind in "fbc" else "o"
        return tuple(value.shape), kind, str(value.dtype)
    if not wire and torch.is_tensor(value):
        if value.is_floating_point():
            kind = "f"
        elif value.is_complex():
            kind = "c"
        else:
            kind = {torch.bool: "b", torch.uint8: "u8"}.get(value.dtype, "i")
        return tuple(value.shape), kind, str(value.dtype)
    wanted = "a numpy array" if wire else "a tensor or numpy array"
    raise DataError(f"{key} must be {wanted}, got {type(value).__name__}")


def _check_finite(key: str, value: Any) -> None:
    """DataError naming the batch rows (B, ...) of a float array that hold NaN or inf."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind != "f" or np.isfinite(value).all():
            return
        flat = value.reshape(value.shape[0], -1)  # (B, rest)
        rows = np.flatnonzero(~np.isfinite(flat).all(-1))[:8].tolist()
        nan, inf = bool(np.isnan(flat).any()), bool(np.isinf(flat).any())
    else:
        if not value.is_floating_point() or torch.isfinite(value).all():
            return
        flat = value.reshape(value.shape[0], -1)  # (B, rest)
        rows = torch.nonzero(~torch.isfinite(flat).all(-1)).flatten()[:8].tolist()
        nan, inf = bool(torch.isnan(flat).any()), bool(torch.isinf(flat).any())
    what = "NaN and inf" if nan and inf else "NaN" if nan else "inf"
    raise DataError(f"{key} contains {what} (batch rows {rows})")


def _tensor(value: Any) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value


def _same_rows(sizes: Mapping[str, int]) -> int:
    """The one batch size of ``sizes`` (key -> rows); DataError naming them when they differ."""
    if len(set(sizes.values())) > 1:
        raise DataError("batch sizes differ between keys: " + ", ".join(f"{k}: {v}" for k, v in sizes.items()))
    return next(iter(sizes.values()), 0)
