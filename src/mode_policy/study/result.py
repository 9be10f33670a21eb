"""What a finished cell recorded (``result.json``): shared by the runner, which writes it, and the report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError


@dataclass(frozen=True)
class CellResult:
    """What a finished cell recorded (``result.json``)."""

    variant: str
    seed: int
    spec: dict[str, Any]
    successes: int
    episodes: int
    per_task: dict[str, list[int]]
    """Task -> [successes, episodes]."""
    params: dict[str, Any]
    """``MoDEPolicy.parameter_counts()`` of the trained policy."""
    train_s: float
    eval_s: float

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes

    @classmethod
    def load(cls, path: Path) -> CellResult:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(f"{path}: not a study cell result ({err!r})") from None
