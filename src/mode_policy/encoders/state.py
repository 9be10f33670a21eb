"""State encoders: small MLPs from a proprioceptive/state vector to observation tokens."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class StateEncoder(nn.Module):
    """(..., state_dim) -> (..., d_model) via Linear-SiLU-Linear."""

    def __init__(self, state_dim: int, hidden: int, d_model: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(state_dim, hidden), nn.SiLU(), nn.Linear(hidden, d_model))

    def forward(self, state: Tensor) -> Tensor:
        return self.net(state)


class GroupedStateEncoder(nn.Module):
    """(..., sum(widths)) -> (..., len(widths), d_model): one :class:`StateEncoder` per
    consecutive slice of the state (an entity: the robot, a drawer, a block), one token each."""

    def __init__(self, widths: Sequence[int], hidden: int, d_model: int) -> None:
        super().__init__()
        self.widths = [int(w) for w in widths]
        self.groups = nn.ModuleList(StateEncoder(w, hidden, d_model) for w in self.widths)

    def forward(self, state: Tensor) -> Tensor:
        slices = torch.split(state, self.widths, dim=-1)
        return torch.stack([enc(part) for enc, part in zip(self.groups, slices, strict=True)], dim=-2)
