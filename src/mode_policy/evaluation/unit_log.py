"""A resumable log of finished evaluation units (CALVIN chains; LIBERO rollouts can follow).

A folder holds ``settings.json`` (what is being evaluated: a log of another evaluation is
refused) and one JSON-lines file per writer process; every line is one finished unit
``{"unit": id, ...}``, flushed and fsynced as it ends. The folder is made when the first unit
finishes: an evaluation that fails before (no simulator, a policy that does not fit it) leaves
nothing, and a ``settings.json`` without units does not refuse the next attempt. A killed evaluation leaves every
finished unit on disk; the next run reads them back and plays only the rest. Several
processes (shards) write their own files, so they never contend.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..fileio import atomic_write_json, read_jsonl

SETTINGS = "settings.json"


class UnitLog:
    """Finished units of one evaluation, in ``folder`` (see the module docstring)."""

    def __init__(self, folder: str | Path, settings: Mapping[str, Any]) -> None:
        """Refuses (ConfigError) a folder holding finished units of another evaluation; writes
        nothing: the folder is made by :meth:`start`, when the first unit finishes (:meth:`append`)."""
        self.folder = Path(folder)
        self.settings = json.loads(json.dumps(dict(settings)))  # as JSON holds it
        self._started = False
        held = self._held()
        if held is not None and held != self.settings and self.records():
            changed = sorted(k for k in set(held) | set(self.settings) if held.get(k) != self.settings.get(k))
            raise ConfigError(
                f"{self.folder} holds results of another evaluation (differs in: "
                f"{', '.join(changed)}); remove it or pass --resume=false to start over"
            )

    def _held(self) -> dict[str, Any] | None:
        path = self.folder / SETTINGS
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return {}  # torn by a kill before any unit finished: replaced at start

    def start(self) -> None:
        """Make the folder and its ``settings.json`` (once, before the first unit is written); a
        settings file without a finished unit (an evaluation that failed before its first) is replaced."""
        if self._started:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._held() != self.settings:
            atomic_write_json(self.folder / SETTINGS, self.settings)
        self._started = True

    def records(self) -> dict[int, dict[str, Any]]:
        """Every finished unit, by id (the first record of a unit wins)."""
        out: dict[int, dict[str, Any]] = {}
        for path in sorted(self.folder.glob("units-*.jsonl")):
            for record in read_jsonl(path):
                out.setdefault(int(record["unit"]), record)
        return out

    def append(self, writer: str, record: Mapping[str, Any]) -> None:
        """Add one finished unit (``record["unit"]`` is its id) to ``writer``'s file, durably."""
        self.start()
        with open(self.folder / f"units-{writer}.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(dict(record)) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def clear(self) -> None:
        """Forget every finished unit (start the evaluation over)."""
        for path in self.folder.glob("units-*.jsonl"):
            path.unlink()
