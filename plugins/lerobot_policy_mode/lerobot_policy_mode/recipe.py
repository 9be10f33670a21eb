"""mode-policy train's learning-rate schedule as a LeRobot scheduler (``"type": "mode_cosine"``).

``lerobot-train`` builds the scheduler from :meth:`ModeConfig.get_scheduler_preset
<lerobot_policy_mode.configuration_mode.ModeConfig.get_scheduler_preset>`; this one calls
:func:`mode_policy.training.setup.lr_factor`, the function ``mode-policy train`` uses, so both
command lines give the same learning rate at every step (linear warm-up from lr / warmup, then
cosine decay to lr * min_lr_ratio at the last step).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from lerobot.optim.schedulers import LRSchedulerConfig
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from mode_policy.errors import ConfigError
from mode_policy.training.setup import lr_factor


@LRSchedulerConfig.register_subclass("mode_cosine")
@dataclass
class ModeSchedulerConfig(LRSchedulerConfig):
    """Warm-up then cosine decay over the run's steps, as ``mode-policy train``."""

    num_warmup_steps: int = 200
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.num_warmup_steps is None or self.num_warmup_steps < 0:
            raise ConfigError(f"num_warmup_steps={self.num_warmup_steps} must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")

    def build(self, optimizer: Optimizer, num_training_steps: int) -> LambdaLR:
        schedule = SimpleNamespace(
            warmup_steps=self.num_warmup_steps, steps=num_training_steps, min_lr_ratio=self.min_lr_ratio
        )
        return LambdaLR(optimizer, lambda step: lr_factor(step, schedule))
