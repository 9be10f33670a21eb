"""Deprecated in 0.2.0, removed in 0.3.0: import from :mod:`mode_policy.model.config` (the policy's
config and presets) and :mod:`mode_policy.training.config` (``TrainConfig``), or from ``mode_policy``."""

import warnings

from .model.config import PRESETS, MoDEConfig, get_preset, preset_overrides
from .training.config import LANGUAGE_ENCODERS, TrainConfig

warnings.warn(
    "mode_policy.config is deprecated: import from mode_policy.model.config or mode_policy.training.config",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["LANGUAGE_ENCODERS", "PRESETS", "MoDEConfig", "TrainConfig", "get_preset", "preset_overrides"]
