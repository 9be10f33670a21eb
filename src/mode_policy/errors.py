"""The project's error classes.

Every error a user can cause (bad config, bad data, bad checkpoint, a simulator
that is missing or misbehaves) is a :class:`ModePolicyError`. The command line
prints these as one line; anything else is a bug and keeps its traceback.
Each class also derives from the built-in exception a caller would expect
(``ValueError``, ``FileNotFoundError``, ...), so ``except ValueError`` still works.
"""

from __future__ import annotations


class ModePolicyError(Exception):
    """Base of every error the user can fix."""


class ConfigError(ModePolicyError, ValueError):
    """A configuration value is invalid or inconsistent (names the field)."""


class DataError(ModePolicyError, ValueError):
    """A dataset or a batch is malformed: missing keys, wrong shapes, bad values."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A dataset file or folder does not exist."""


class CheckpointError(ModePolicyError, ValueError):
    """A checkpoint is missing, corrupt, or does not fit the model."""


class RunDirError(ModePolicyError, ValueError):
    """A run directory is in a state the command cannot use (not empty, no checkpoint, ...)."""


class SimulatorError(ModePolicyError, RuntimeError):
    """A simulator (Meta-World, LIBERO, CALVIN) is missing, misconfigured or failed."""


class TrainingError(ModePolicyError, RuntimeError):
    """Training cannot go on: the loss or the weights became non-finite (lower the lr, check the data)."""


class OutputError(ModePolicyError, OSError):
    """An output cannot be written: its folder is read-only or full, or the disk failed mid-write."""


class WorkerDied(ModePolicyError, RuntimeError):
    """An evaluation worker process raised or died; the message names which and how."""
