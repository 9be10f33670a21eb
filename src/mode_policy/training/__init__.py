"""Training: :class:`TrainConfig`, the set-up that turns it into a ready run
(:func:`~mode_policy.training.setup.prepare_run`), the loop (:func:`train`), the run directory,
EMA and fine-tuning."""

from .config import TrainConfig
from .loop import train

__all__ = ["TrainConfig", "train"]
