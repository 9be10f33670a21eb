"""What evaluation needs from a policy: :class:`Policy` (MoDEPolicy is one; so is any
``torch.nn.Module`` with these members)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import torch
from torch import Tensor


class PolicyConfig(Protocol):
    """The configuration fields evaluation reads."""

    state_dim: int
    """Proprioceptive state size (0: no state input)."""
    action_dim: int
    horizon: int
    """Actions per predicted chunk."""
    n_obs_steps: int
    """Observation frames per prediction (history length)."""
    n_action_steps: int
    """Actions executed from each chunk before re-planning."""
    image_keys: list[str]
    """Camera features (``observation.images.<camera>``) the policy reads."""
    image_size: int
    """Side of the square camera images it expects (0: not set)."""


class Policy(Protocol):
    """A policy the evaluators can run.

    Meta-World plans chunks for a batch of envs itself (``predict_action_chunk``); LIBERO and
    CALVIN step one action at a time (``select_action``, which keeps the policy's own
    observation history and action queue, cleared by ``reset``)."""

    config: PolicyConfig
    training: bool

    def predict_action_chunk(self, batch: Mapping[str, Any]) -> Tensor:
        """(B, horizon, action_dim) actions from a batch with (B, n_obs_steps, ...) histories."""
        ...

    def select_action(self, observation: Mapping[str, Any]) -> Tensor:
        """(B, action_dim): the next action for one observation frame per env."""
        ...

    def reset(self) -> None:
        """Forget the history and queued actions (called at every episode start)."""
        ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...

    def parameters(self) -> Iterator[Tensor]: ...


def policy_device(policy: Policy) -> torch.device:
    """The device of the policy's first parameter (CPU for a policy without any)."""
    param = next(iter(policy.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


@contextlib.contextmanager
def eval_mode(policy: Policy) -> Iterator[None]:
    """Run the block with the policy in eval mode; restore its training flag after."""
    was_training = policy.training
    policy.eval()
    try:
        yield
    finally:
        policy.train(was_training)
