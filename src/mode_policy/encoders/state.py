"""State encoder: a small MLP from a proprioceptive/state vector to one token."""

from __future__ import annotations

from torch import Tensor, nn


class StateEncoder(nn.Module):
    """(..., state_dim) -> (..., d_model) via Linear-SiLU-Linear."""

    def __init__(self, state_dim: int, hidden: int, d_model: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(state_dim, hidden), nn.SiLU(), nn.Linear(hidden, d_model))

    def forward(self, state: Tensor) -> Tensor:
        return self.net(state)
