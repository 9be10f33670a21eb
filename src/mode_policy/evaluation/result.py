"""One result schema for every evaluation (Meta-World, LIBERO, CALVIN).

An :class:`EvalResult` holds, per task, the successes, the episodes, a 95%
Wilson interval and the wall time, and the same for all tasks together.
``to_dict`` is what ``eval_info.json`` holds; ``from_dict`` reads it back
and rejects files that do not follow the schema.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..fileio import atomic_write_json

SCHEMA_VERSION = 1


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% (z=1.96) Wilson score interval of a success rate ``successes / n``."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z**2 / n
    center = (p + z**2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


@dataclass
class TaskResult:
    """Outcome of the episodes of one task."""

    successes: int
    episodes: int
    wall_s: float = 0.0
    """Seconds spent on this task's episodes (a share of shared batches where envs run together)."""
    instruction: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    """Environment-specific numbers (e.g. ``mean_steps``)."""

    def __post_init__(self) -> None:
        if not 0 <= self.successes <= self.episodes:
            raise DataError(f"successes={self.successes} must be in [0, episodes={self.episodes}]")

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0

    @property
    def ci95(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.episodes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "successes": self.successes,
            "episodes": self.episodes,
            "success_rate": self.success_rate,
            "ci95": list(self.ci95),
            "wall_s": self.wall_s,
            "instruction": self.instruction,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "task") -> TaskResult:
        try:
            successes, episodes = int(data["successes"]), int(data["episodes"])
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{where}: needs integer 'successes' and 'episodes' ({err!r})") from None
        known = {"successes", "episodes", "success_rate", "ci95", "wall_s", "instruction"}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(successes, episodes, float(data.get("wall_s", 0.0)), str(data.get("instruction", "")), extra)


@dataclass
class EvalResult:
    """Per-task and overall success of one evaluation run."""

    env: str
    """'metaworld', 'libero' or 'calvin'."""
    per_task: dict[str, TaskResult]
    """Task name -> result, in evaluation order."""
    wall_s: float = 0.0
    seed: int = 0
    policy: str = ""
    """Where the evaluated policy was loaded from."""
    settings: dict[str, Any] = field(default_factory=dict)
    """How it was run (suite, episodes per task, sampling steps, ...)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """Headline numbers beyond success rates (CALVIN: ``avg_len``, ``chain_success``)."""

    @property
    def overall(self) -> TaskResult:
        """All tasks' episodes together."""
        tasks = self.per_task.values()
        return TaskResult(sum(t.successes for t in tasks), sum(t.episodes for t in tasks), self.wall_s)

    def to_dict(self) -> dict[str, Any]:
        overall = self.overall.to_dict()
        overall.pop("instruction")
        return {
            "schema_version": SCHEMA_VERSION,
            "env": self.env,
            "seed": self.seed,
            "policy": self.policy,
            "wall_s": self.wall_s,
            "settings": self.settings,
            "metrics": self.metrics,
            "per_task": {name: r.to_dict() for name, r in self.per_task.items()},
            "overall": overall,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "eval_info.json") -> EvalResult:
        if data.get("schema_version") != SCHEMA_VERSION or not isinstance(data.get("per_task"), Mapping):
            raise DataError(
                f"{where}: not an evaluation result of schema version {SCHEMA_VERSION} (written by `mode-policy eval`)"
            )
        per_task = {str(k): TaskResult.from_dict(v, f"{where}: task {k!r}") for k, v in data["per_task"].items()}
        return cls(
            str(data.get("env", "")),
            per_task,
            float(data.get("wall_s", 0.0)),
            int(data.get("seed", 0)),
            str(data.get("policy", "")),
            dict(data.get("settings", {})),
            dict(data.get("metrics", {})),
        )

    def save(self, path: str | Path) -> Path:
        """Write ``to_dict()`` as JSON, atomically, tasks in evaluation order."""
        return atomic_write_json(path, self.to_dict(), sort_keys=False)

    @classmethod
    def load(cls, path: str | Path) -> EvalResult:
        import json

        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")), str(path))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON ({err})") from None

    def format_table(self) -> str:
        """Plain-text table: per-task success with 95% intervals, then overall and metrics."""
        width = max([28, *(len(t) + 1 for t in self.per_task)])
        rows = [f"{'task':<{width}} {'success':>8} {'95% CI':>15}  episodes"]
        for name, r in self.per_task.items():
            lo, hi = r.ci95
            rows.append(f"{name:<{width}} {r.success_rate:>8.2f} [{lo:.2f}, {hi:.2f}]  {r.episodes:>8}")
        o = self.overall
        lo, hi = o.ci95
        rows.append(f"{'overall':<{width}} {o.success_rate:>8.3f} [{lo:.2f}, {hi:.2f}]  {o.episodes:>8}")
        for key, value in self.metrics.items():
            rows.append(f"{key}: {_format_number(value)}")
        return "\n".join(rows)


def _format_number(value: Any) -> str:
    """Floats to 3 decimals, also inside lists (e.g. CALVIN's chain success rates)."""
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_format_number(v) for v in value) + "]"
    return str(value)
