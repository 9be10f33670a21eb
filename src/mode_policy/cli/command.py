"""A sub-command of ``mode-policy``: its options dataclass, the function that runs it, and its parsing extras."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Command:
    """A sub-command: its options dataclass, the function running it, and its parsing extras."""

    options: type
    run: Callable[[Any], int]
    help: str
    positional: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
