"""The run directory: every file a training run (and its evaluation and report) holds.

::

    config.json         the run's configuration: {"train": TrainConfig, "policy": MoDEConfig, "world_size"}
    stats.json          normalisation statistics of the dataset
    metrics.jsonl       one JSON object per logged training step
    evals.jsonl         periodic evaluations during training (``--eval_every``)
    tb/                 TensorBoard events
    checkpoints/        step_XXXXXXXX/ folders (policy + training_state.pt) and LATEST
    model/              the final EMA policy (``MoDEPolicy.from_pretrained``)
    train_summary.json  steps, wall time, DDP rank consistency
    eval_info.json      the last evaluation (:class:`mode_policy.evaluation.EvalResult`)
    videos/             evaluation videos
    report/             ``mode-policy report`` output

Nothing else in the package spells these names.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, DataError, RunDirError
from ..fileio import atomic_write_json, atomic_write_text, read_jsonl
from ..validation import loads_json

CHECKPOINT_PREFIX = "step_"
TRAINING_STATE = "training_state.pt"
MODEL_CONFIG = "config.json"  # inside a saved model folder, next to model.safetensors


def _read_json(path: Path, config: bool = False) -> Any | None:
    """Parsed JSON, or None if the file is missing (a corrupt file is an error naming it);
    ``config``: numbers checked as every config reader checks them (:func:`~mode_policy.validation.loads_json`)."""
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
        return loads_json(text, str(path)) if config else json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None


class RunDir:
    """Paths and reads/writes of one run directory (see the module docstring)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def __fspath__(self) -> str:
        return str(self.root)

    # ------------------------------------------------------------- paths
    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def stats(self) -> Path:
        return self.root / "stats.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def evals(self) -> Path:
        return self.root / "evals.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def latest_pointer(self) -> Path:
        return self.checkpoints / "LATEST"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def summary(self) -> Path:
        return self.root / "train_summary.json"

    @property
    def eval_info(self) -> Path:
        return self.root / "eval_info.json"

    @property
    def videos(self) -> Path:
        return self.root / "videos"

    @property
    def report(self) -> Path:
        return self.root / "report"

    # ------------------------------------------------------------ states
    def is_empty(self) -> bool:
        return not self.root.exists() or not any(self.root.iterdir())

    def is_stub(self) -> bool:
        """True for what a run that failed before its first checkpoint leaves: only run files
        (config, stats, metrics, TensorBoard), no checkpoint and no model. Safe to start over."""
        if self.is_empty() or self.latest_pointer.exists() or self.model.exists():
            return False
        stub_files = {
            p.name
            for p in (
                self.config,
                self.stats,
                self.metrics,
                self.evals,
                self.tensorboard,
                self.summary,
                self.checkpoints,
            )
        }
        return all(p.name in stub_files for p in self.root.iterdir()) and not any(
            p for p in self.checkpoints.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir()
        )

    def clear_stub(self) -> None:
        """Remove what :meth:`is_stub` describes (nothing else)."""
        if not self.is_stub():
            raise RunDirError(f"{self.root} is not the stub of a failed run; refusing to clear it")
        for path in self.root.iterdir():
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    def prepare_resume(self, step: int) -> None:
        """Before continuing from checkpoint ``step``: drop what a kill left half-written (checkpoint
        folders, temporary files of atomic writes) and the metrics / eval records of steps
        after it (they will be logged again)."""
        for folder in (self.root, self.checkpoints, self.model):  # half-written folders and atomic-write temps
            for tmp in folder.glob(".*.tmp"):
                shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink()
        for path, records in ((self.metrics, self.read_metrics()), (self.evals, self.read_evals())):
            if path.is_file():
                kept = [r for r in records if r.get("step", 0) <= step]
                atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))

    @staticmethod
    def model_dir(path: str | os.PathLike) -> Path:
        """The saved-model folder of ``path``: ``path/model`` for a run directory, else ``path``."""
        path = Path(path)
        inner = RunDir(path).model
        return inner if (inner / MODEL_CONFIG).is_file() else path

    @staticmethod
    def model_files(model_dir: str | os.PathLike) -> list[Path]:
        """What a command reading the saved model in ``model_dir`` must never write over: the model
        folder's files and, for a run's model, the run's own files and its checkpoints."""
        model_dir = Path(model_dir)
        files = [p for p in model_dir.iterdir() if p.is_file()] if model_dir.is_dir() else []
        run = RunDir.of_model(model_dir)
        if run is not None:
            files += [p for p in run.root.iterdir() if p.is_file()] + [run.checkpoints]
        return files

    @staticmethod
    def of_model(model_dir: str | os.PathLike) -> RunDir | None:
        """The run directory a saved model folder belongs to (None for a stand-alone model)."""
        parent = RunDir(Path(model_dir).parent)
        return parent if parent.config.is_file() and parent.model == Path(model_dir) else None

    # ------------------------------------------------------------- reads
    def read_config(self) -> dict[str, Any] | None:
        return _read_json(self.config, config=True)

    def read_summary(self) -> dict[str, Any] | None:
        return _read_json(self.summary)

    def read_stats(self) -> dict[str, Any] | None:
        return _read_json(self.stats)

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics)

    def read_evals(self) -> list[dict[str, Any]]:
        return read_jsonl(self.evals)

    def read_eval_info(self):
        """The :class:`~mode_policy.evaluation.EvalResult` in ``eval_info.json``, or None."""
        from ..evaluation.result import EvalResult

        return EvalResult.load(self.eval_info) if self.eval_info.is_file() else None

    # ------------------------------------------------------------ writes
    def write_config(self, data: dict[str, Any]) -> Path:
        return atomic_write_json(self.config, data)

    def write_stats(self, data: dict[str, Any]) -> Path:
        return atomic_write_json(self.stats, data)

    def write_summary(self, data: dict[str, Any]) -> Path:
        return atomic_write_json(self.summary, data)

    def append_metrics(self, record: dict[str, Any]) -> None:
        _append_jsonl(self.metrics, record)

    def append_eval(self, record: dict[str, Any]) -> None:
        _append_jsonl(self.evals, record)

    # ------------------------------------------------------- checkpoints
    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"{CHECKPOINT_PREFIX}{step:08d}"

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint ``LATEST`` names (None if there is none); CheckpointError if it is incomplete."""
        if not self.latest_pointer.is_file():
            return None
        path = self.checkpoints / self.latest_pointer.read_text().strip()
        if not (path / TRAINING_STATE).is_file():
            raise CheckpointError(
                f"checkpoint {path} named by {self.latest_pointer} is incomplete (no {TRAINING_STATE})"
            )
        return path

    def newest_intact_checkpoint(self) -> Path | None:
        """The newest checkpoint folder that holds a policy and its training state (None if none):
        where a run whose ``LATEST`` is gone (deleted, or lost in a copy) continues from."""
        intact = [
            p
            for p in self.checkpoints.glob(f"{CHECKPOINT_PREFIX}*")
            if p.is_dir()
            and p.name[len(CHECKPOINT_PREFIX) :].isdigit()
            and all((p / name).is_file() for name in (TRAINING_STATE, MODEL_CONFIG, "model.safetensors"))
        ]
        return max(intact, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]), default=None)

    def save_checkpoint(self, step: int, write: Callable[[Path], None], keep: int) -> Path:
        """Write checkpoint ``step`` through ``write(folder)`` into a temporary folder,
        rename it into place, then point ``LATEST`` at it; only the newest ``keep`` stay."""
        if keep < 1:
            raise RunDirError(f"keep_checkpoints={keep}: at least one checkpoint must be kept")
        final = self.checkpoint(step)
        tmp = final.with_name(f".{final.name}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        write(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_text(self.latest_pointer, final.name + "\n")
        for old in sorted(p for p in self.checkpoints.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir())[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final


def load_training_state(checkpoint: Path) -> dict[str, Any]:
    """The optimiser, scheduler, EMA and RNG states of a checkpoint folder (``training_state.pt``)."""
    try:
        return torch.load(checkpoint / TRAINING_STATE, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
        raise CheckpointError(f"checkpoint {checkpoint / TRAINING_STATE} is corrupt or truncated: {err}") from None


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
