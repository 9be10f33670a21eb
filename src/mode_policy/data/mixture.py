"""Dataset mixtures: several LeRobot datasets trained together, each sampled by its weight.

A mixture file (YAML, or JSON, which YAML reads too)::

    datasets:
      - path: metaworld-mt10          # relative to this file (or absolute)
        weight: 3                     # relative sampling weight, >= 0 (default 1)
        name: metaworld               # keys its normalisation in the checkpoint (default: folder name)
      - path: libero-10
        weight: 1
        cameras:                      # dataset camera -> policy camera (default: every camera, same name)
          observation.images.agentview: observation.images.static
          observation.images.wrist: observation.images.gripper

Each dataset keeps its own action and state normalisation and widths; batches pad
every row to the widest dataset (:class:`MixtureSampler`), and the policy masks the
padding out of the loss. Which dataset each sample of a rank's stream comes from is
decided by :class:`WeightSchedule`: after any number n of samples, dataset j has been
drawn within one sample of ``w_j * n`` (the frames inside a dataset are drawn uniformly).
A plain ``--dataset`` run is the one-member mixture :meth:`Mixture.single`, whose batches
are exactly those of :class:`~mode_policy.data.windows.WindowSampler`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

from ..constants import ACTION_KEY, IMAGES_PREFIX, STATE_KEY
from ..errors import ConfigError, DataError, DataNotFoundError
from ..model.normalize import DATASET_KEY, DATASET_NAME
from ..validation import load_yaml
from .windows import EpisodeData, WindowSampler, dataset_cameras

MIXTURE_KEYS = ("datasets",)
MEMBER_KEYS = ("path", "weight", "name", "cameras")


@dataclass(frozen=True)
class MixtureMember:
    """One dataset of a mixture."""

    name: str
    path: Path
    weight: float
    cameras: dict[str, str] = field(default_factory=dict)  # dataset camera -> policy camera; empty: identity

    def policy_cameras(self) -> dict[str, tuple[int, ...]]:
        """Policy camera -> the dataset camera's shape (H, W, 3), after the ``cameras`` mapping."""
        have = dataset_cameras(self.path)
        if not self.cameras:
            return have
        return {target: have[source] for source, target in self.cameras.items()}

    def source_camera(self, policy_key: str) -> str:
        """The dataset camera feeding policy camera ``policy_key``."""
        return next((s for s, t in self.cameras.items() if t == policy_key), policy_key)


@dataclass(frozen=True)
class Mixture:
    """The datasets of a run; ``source`` (the mixture file, or the one dataset) names it in messages."""

    members: tuple[MixtureMember, ...]
    source: str
    from_file: bool

    @classmethod
    def single(cls, dataset: str | Path) -> Mixture:
        """The one-member mixture of a plain ``--dataset`` run."""
        path = Path(dataset)
        if not path.exists():
            raise DataNotFoundError(f"dataset folder not found: {dataset}")
        return cls((MixtureMember(path.name or "dataset", path, 1.0),), str(dataset), from_file=False)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def cameras(self) -> dict[str, tuple[int, ...]]:
        """Every policy camera some member provides (first member's order first) and its shape;
        DataError when two members give one camera different shapes."""
        out: dict[str, tuple[int, ...]] = {}
        for member in self.members:
            for key, shape in member.policy_cameras().items():
                if out.setdefault(key, shape) != shape:
                    raise DataError(
                        f"{self.source}: camera {key} is {_size(out[key])} in one dataset and "
                        f"{_size(shape)} in {member.name!r}; convert them to one size "
                        "(e.g. `mode-policy convert libero ... --image_size N`)"
                    )
        return out


def _size(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape[:2])


def read_mixture(path: str | Path) -> Mixture:
    """Parse and check a mixture file: ConfigError / DataNotFoundError / DataError naming the
    file, the entry and the problem (unknown key, bad weight, missing dataset, bad camera map)."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"mixture file not found: {path}")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"), f"mixture file {path}")
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"mixture file {path}: cannot read it ({' '.join(str(err).split())})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"mixture file {path}: expected a mapping with a 'datasets' list")
    unknown = sorted(set(raw) - set(MIXTURE_KEYS))
    if unknown:
        raise ConfigError(
            f"mixture file {path}: unknown key(s) {', '.join(map(str, unknown))} (known: {', '.join(MIXTURE_KEYS)})"
        )
    entries = raw.get("datasets")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"mixture file {path}: 'datasets' must be a non-empty list of datasets")
    members = [_member(entry, i, path) for i, entry in enumerate(entries)]
    names = [m.name for m in members]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(
            f"mixture file {path}: dataset name(s) {', '.join(twice)} used twice (give each dataset its own 'name')"
        )
    if not any(m.weight > 0 for m in members):
        raise ConfigError(f"mixture file {path}: every weight is 0; at least one dataset needs a weight > 0")
    check_weights([m.weight for m in members], names, f"mixture file {path}")
    return Mixture(tuple(members), str(path), from_file=True)


def check_weights(weights: Sequence[float], names: Sequence[str], where: str) -> None:
    """ConfigError when the weights cannot be normalised: their sum overflows a 64-bit float, or a
    positive weight is 0 against the sum (its dataset would never be drawn)."""
    total = sum(float(w) for w in weights)  # inf when the sum overflows (fsum raises instead)
    if not math.isfinite(total):
        raise ConfigError(
            f"{where}: the weights {list(weights)} sum beyond a 64-bit float (they are relative: scale them down)"
        )
    vanishing = [n for n, w in zip(names, weights) if w > 0 and w / total == 0.0]
    if vanishing:
        raise ConfigError(
            f"{where}: the weight of {', '.join(vanishing)} is 0 next to the sum {total:g} "
            "(its dataset would never be drawn; weights are relative)"
        )


def _member(entry: Any, i: int, path: Path) -> MixtureMember:
    where = f"mixture file {path}, datasets[{i}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping with 'path' (and 'weight', 'name', 'cameras')")
    unknown = sorted(set(entry) - set(MEMBER_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(str, unknown))} (known: {', '.join(MEMBER_KEYS)})")
    if not isinstance(entry.get("path"), str) or not entry["path"]:
        raise ConfigError(f"{where}: 'path' must name a dataset folder")
    root = Path(entry["path"]).expanduser()
    root = root if root.is_absolute() else path.parent / root
    if not root.is_dir():
        raise DataNotFoundError(f"{where}: dataset folder not found: {root}")
    weight = entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise ConfigError(f"{where}: weight {weight!r} must be a finite number >= 0")
    name = entry.get("name", root.resolve().name)
    if not isinstance(name, str) or not DATASET_NAME.match(name):
        raise ConfigError(f"{where}: dataset name {name!r} must be letters, digits, '_' or '-' (set 'name' explicitly)")
    cameras = entry.get("cameras") or {}
    if not isinstance(cameras, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in cameras.items()):
        raise ConfigError(f"{where}: 'cameras' must map dataset camera keys to policy camera keys")
    bad = [v for v in cameras.values() if not re.match(rf"^{re.escape(IMAGES_PREFIX)}.+", v)]
    if bad:
        raise ConfigError(f"{where}: policy camera(s) {bad} must look like {IMAGES_PREFIX}<camera>")
    targets = list(cameras.values())
    if len(set(targets)) != len(targets):
        raise ConfigError(f"{where}: two dataset cameras map to one policy camera ({targets})")
    have = dataset_cameras(root)
    missing = [k for k in cameras if k not in have]
    if missing:
        raise DataError(
            f"{where}: dataset {root} has no camera(s) {missing} (its cameras: {', '.join(have) or 'none'})"
        )
    return MixtureMember(name, root, float(weight), dict(cameras))


# ------------------------------------------------------------------- loaded data
Loader = Callable[[Path, list[str]], EpisodeData]
"""Loads one dataset with the given (dataset) camera keys: :func:`mode_policy.training.setup.prepare_run` routes it."""


@dataclass
class MixtureData:
    """The loaded members of a :class:`Mixture`; their cameras already renamed to the policy's."""

    mixture: Mixture
    members: list[EpisodeData]
    image_keys: list[str]

    @classmethod
    def load(cls, mixture: Mixture, image_keys: Sequence[str], load: Loader) -> MixtureData:
        """Load every member with the dataset cameras behind the policy cameras ``image_keys``;
        DataError naming the source and the dataset when a member cannot provide one."""
        members = []
        for member in mixture.members:
            cameras = member.policy_cameras()
            lacking = [k for k in image_keys if k not in cameras]
            if lacking:
                where = f"{mixture.source}: dataset {member.name!r}" if mixture.from_file else f"dataset {member.path}"
                raise DataError(
                    f"{where} has no camera for policy camera(s) {lacking} (it gives: "
                    f"{', '.join(cameras) or 'no cameras'}); map one of its cameras with 'cameras:' in "
                    "a mixture file, or leave those cameras out (policy.image_keys=[...])"
                )
            data = load(member.path, [member.source_camera(k) for k in image_keys])
            data.images = {k: data.images[member.source_camera(k)] for k in image_keys}
            members.append(data)
        return cls(mixture, members, list(image_keys))

    @property
    def names(self) -> list[str]:
        return self.mixture.names

    @property
    def tasks(self) -> list[str]:
        """Every member's instructions, sorted (a single dataset's own task list)."""
        return sorted({t for m in self.members for t in m.tasks})

    @property
    def action_dim(self) -> int:
        return max(m.action_dim for m in self.members)

    @property
    def state_dim(self) -> int:
        return max(m.state_dim for m in self.members)

    def camera_sizes(self, key: str) -> set[tuple[int, int]]:
        """The (H, W) that policy camera ``key`` has in the members."""
        return {tuple(m.images[key].shape[1:3]) for m in self.members}

    def dataset_stats(self) -> dict[str, dict[str, dict[str, list[float]]]]:
        """Normalisation statistics per dataset name."""
        return {name: m.stats() for name, m in zip(self.names, self.members)}


# --------------------------------------------------------------------- sampling
class WeightSchedule:
    """Which member each sample of a stream comes from, deterministically: Tijdeman's rule for
    the chairman-assignment problem. After every prefix of n samples, member j has been chosen
    ``c_j(n)`` times with ``|c_j(n) - w_j n| <= 1 - 1/(2D - 2)`` (< 1) for the D members of
    positive weight; weight-0 members are never chosen. The state is the counts so far."""

    def __init__(self, weights: Sequence[float]) -> None:
        total = sum(float(w) for w in weights)
        if not weights or not math.isfinite(total) or total <= 0 or any(w < 0 for w in weights):
            raise ConfigError(f"sampling weights {list(weights)}: need finite weights >= 0 with a positive, finite sum")
        self.weights = [w / total for w in weights]
        self.active = [j for j, w in enumerate(self.weights) if w > 0]
        self.slack = 1 - 1 / (2 * len(self.active) - 2) if len(self.active) > 1 else 0.0
        self.counts = [0] * len(weights)

    def take(self, size: int) -> list[int]:
        """The members of the next ``size`` samples (and count them)."""
        if len(self.active) == 1:  # one dataset (a plain --dataset run): nothing to decide
            self.counts[self.active[0]] += size
            return [self.active[0]] * size
        out = []
        w, c, slack = self.weights, self.counts, self.slack
        n = sum(c)
        for _ in range(size):
            n += 1
            eligible = [j for j in self.active if c[j] + 1 - w[j] * n <= slack + 1e-9] or self.active
            j = min(eligible, key=lambda k: (c[k] + slack) / w[k])
            c[j] += 1
            out.append(j)
        return out

    def state_dict(self) -> dict[str, list[int]]:
        return {"counts": list(self.counts)}

    def load_state_dict(self, state: dict[str, list[int]]) -> None:
        if len(state["counts"]) != len(self.counts):
            raise ConfigError(
                f"the checkpoint's sampler has {len(state['counts'])} datasets, this mixture {len(self.counts)}"
            )
        self.counts = [int(c) for c in state["counts"]]


class MixtureSampler:
    """Training batches of a :class:`MixtureData`: each row's member from :class:`WeightSchedule`,
    its frame uniform within that member (``generator``); rows gathered by each member's
    :class:`~mode_policy.data.windows.WindowSampler`, states and actions zero-padded to the widest
    member. With ``tag_rows`` every batch carries ``dataset`` (the member name of each row), which
    a policy with per-dataset normalisation reads.

    ``goal_table`` (num_tasks, goal_dim) is indexed by :attr:`MixtureData.tasks`.
    """

    def __init__(
        self,
        data: MixtureData,
        n_obs_steps: int,
        horizon: int,
        goal_table: Tensor | None = None,
        tag_rows: bool = False,
    ) -> None:
        self.data, self.tag_rows = data, tag_rows
        union = {t: i for i, t in enumerate(data.tasks)}
        self.samplers = []
        for member in data.members:
            table = None
            if goal_table is not None:
                table = goal_table if member.tasks == data.tasks else goal_table[[union[t] for t in member.tasks]]
            self.samplers.append(WindowSampler(member, n_obs_steps, horizon, table))
        self.schedule = WeightSchedule([m.weight for m in data.mixture.members])

    def sample(self, size: int, generator: torch.Generator) -> dict[str, Any]:
        """The next batch of ``size`` rows."""
        members = torch.tensor(self.schedule.take(size))  # (B,)
        parts = []
        for j, sampler in enumerate(self.samplers):
            rows = torch.nonzero(members == j).flatten()
            if rows.numel():
                frames = torch.randint(0, len(sampler), (rows.numel(),), generator=generator)
                parts.append((j, rows, sampler.batch(frames)))
        batch = parts[0][2] if len(parts) == 1 else self._merge(parts, size)
        batch = self._pad(batch)
        if self.tag_rows:
            names = self.data.names
            batch[DATASET_KEY] = [names[j] for j in members.tolist()]
        return batch

    def _pad(self, batch: dict[str, Any]) -> dict[str, Any]:
        for key, width in ((STATE_KEY, self.data.state_dim), (ACTION_KEY, self.data.action_dim)):
            if batch[key].shape[-1] < width:
                batch[key] = F.pad(batch[key], (0, width - batch[key].shape[-1]))
        return batch

    def _merge(self, parts: list[tuple[int, Tensor, dict[str, Any]]], size: int) -> dict[str, Any]:
        """Scatter the members' row batches into one batch of ``size`` rows (in schedule order)."""
        out: dict[str, Any] = {}
        for _, rows, sub in parts:
            sub = self._pad(sub)
            for key, value in sub.items():
                if torch.is_tensor(value):
                    if key not in out:
                        out[key] = value.new_zeros((size, *value.shape[1:]))
                    out[key][rows] = value
                else:  # task strings
                    column = out.setdefault(key, [""] * size)
                    for r, v in zip(rows.tolist(), value):
                        column[r] = v
        return out
