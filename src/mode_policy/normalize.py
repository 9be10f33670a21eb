"""Normalisation statistics that live inside the policy (and its checkpoint).

Actions are mapped min-max to [-1, 1]; states are standardised (mean / std).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from .constants import ACTION_KEY, STATE_KEY
from .errors import DataError

STD_FLOOR = 1e-2  # states with a (near) constant dimension are not blown up
RANGE_FLOOR = 1e-4  # constant action dimensions map to 0


class Normalizer(nn.Module):
    """Buffers ``action_min/max`` (A,) and ``state_mean/std`` (S,); identity until set."""

    def __init__(self, action_dim: int, state_dim: int) -> None:
        super().__init__()
        self.register_buffer("action_min", -torch.ones(action_dim))
        self.register_buffer("action_max", torch.ones(action_dim))
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_std", torch.ones(state_dim))

    @torch.no_grad()
    def set_stats(self, stats: Mapping[str, Mapping[str, object]]) -> None:
        """Load statistics ``{"action": {"min", "max"}, "observation.state": {"mean", "std"}}``
        (array-likes). Raises DataError naming a missing or mis-shaped entry."""
        wanted = [(ACTION_KEY, "min", self.action_min), (ACTION_KEY, "max", self.action_max)]
        if self.state_mean.numel():
            wanted += [
                (STATE_KEY, "mean", self.state_mean),
                (STATE_KEY, "std", self.state_std),
            ]
        for key, stat, buf in wanted:
            if key not in stats or stat not in stats[key]:
                raise DataError(f"normalisation statistics lack {key}.{stat}")
            value = torch.as_tensor(stats[key][stat], dtype=buf.dtype).reshape(-1)
            if value.shape != buf.shape:
                raise DataError(
                    f"normalisation statistic {key}.{stat} has {value.numel()} values, "
                    f"the policy expects {buf.numel()}"
                )
            if not torch.isfinite(value).all():
                raise DataError(f"normalisation statistic {key}.{stat} contains NaN or inf")
            buf.copy_(value)

    def _center_scale(self) -> tuple[Tensor, Tensor]:
        center = (self.action_max + self.action_min) / 2
        half_range = ((self.action_max - self.action_min) / 2).clamp_min(RANGE_FLOOR)
        return center, half_range

    def normalize_action(self, action: Tensor) -> Tensor:
        center, half_range = self._center_scale()
        return (action - center) / half_range

    def unnormalize_action(self, action: Tensor) -> Tensor:
        center, half_range = self._center_scale()
        return action * half_range + center

    def normalize_state(self, state: Tensor) -> Tensor:
        return (state - self.state_mean) / self.state_std.clamp_min(STD_FLOOR)
