"""One dataset of a policy trained on a mixture, seen as a policy of its own.

A mixture policy holds one normalisation (and one action / state width) per dataset, and its
``predict_action_chunk`` / ``select_action`` take the dataset's name. The evaluators and the
server speak the plain :class:`~mode_policy.evaluation.protocol.Policy` protocol, so
:func:`for_dataset` wraps the policy in a :class:`DatasetPolicy` that names the dataset on every
call and reports that dataset's widths in its ``config``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from torch import Tensor

from .errors import ConfigError
from .policy import MoDEPolicy

__all__ = ["DatasetConfig", "DatasetPolicy", "for_dataset", "load_dataset_policy"]


class DatasetConfig:
    """A read-only view of the policy's config with one dataset's ``action_dim`` / ``state_dim``."""

    def __init__(self, config: Any, action_dim: int, state_dim: int) -> None:
        object.__setattr__(self, "_config", config)
        object.__setattr__(self, "_widths", {"action_dim": action_dim, "state_dim": state_dim})

    def __getattr__(self, name: str) -> Any:
        widths = object.__getattribute__(self, "_widths")
        return widths[name] if name in widths else getattr(object.__getattribute__(self, "_config"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise ConfigError(
            f"cannot set {name}: a policy's config is fixed once built (pass sampling settings with each call, "
            "see mode_policy.SamplingSettings)"
        )

    def to_dict(self) -> dict[str, Any]:
        """The policy's config as a dict, with this dataset's widths."""
        return {**self._config.to_dict(), **self._widths}


class DatasetPolicy:
    """``policy`` restricted to ``dataset``: its normalisation, widths and instructions."""

    def __init__(self, policy: MoDEPolicy, dataset: str) -> None:
        member = policy.dataset_normalizers.member(dataset)
        self.policy, self.dataset = policy, dataset
        self.config = DatasetConfig(policy.config, member.action_min.numel(), member.state_mean.numel())

    @property
    def training(self) -> bool:
        return self.policy.training

    def predict_action_chunk(self, batch: Mapping[str, Any], noise: Tensor | None = None, **kwargs: Any) -> Tensor:
        """(B, H, A_dataset) actions in the dataset's units (``kwargs``: as the policy's, e.g. ``sampling``)."""
        return self.policy.predict_action_chunk(batch, noise, dataset=self.dataset, **kwargs)

    def select_action(self, observation: Mapping[str, Any], **kwargs: Any) -> Tensor:
        """(B, A_dataset): the next action, the policy's queue and history as usual."""
        return self.policy.select_action(observation, dataset=self.dataset, **kwargs)

    def reset(self) -> None:
        self.policy.reset()

    @property
    def goal_encoder(self) -> Any:
        """The policy's goal encoder (one for every dataset)."""
        return self.policy.goal_encoder

    def goal_vector(self, batch: Mapping[str, Any]) -> Tensor:
        """As :meth:`MoDEPolicy.goal_vector`."""
        return self.policy.goal_vector(batch)

    def train(self, mode: bool = True) -> DatasetPolicy:
        self.policy.train(mode)
        return self

    def eval(self) -> DatasetPolicy:
        return self.train(False)

    def parameters(self) -> Iterator[Tensor]:
        return self.policy.parameters()


def for_dataset(policy: MoDEPolicy, dataset: str = "") -> MoDEPolicy | DatasetPolicy:
    """The policy as the evaluators see it: itself for a single-dataset policy, else the view of
    ``dataset`` (default: the only dataset of a one-member policy). ConfigError naming the choices
    when the name is missing or unknown."""
    names = policy.dataset_names
    if not names:
        if dataset:
            raise ConfigError(
                f"dataset_name={dataset!r}: this policy was trained on one dataset and has no "
                "per-dataset normalisation; leave dataset_name out"
            )
        return policy
    if not dataset:
        if len(names) > 1:
            raise ConfigError(
                f"this policy was trained on a mixture of {names}: choose the dataset whose "
                "normalisation and action width to use with --dataset_name"
            )
        dataset = names[0]
    if dataset not in names:
        raise ConfigError(f"dataset_name={dataset!r} is not one of the policy's datasets {names}")
    return DatasetPolicy(policy, dataset)


def load_dataset_policy(
    model_dir: str, device: str = "cpu", steps: int = 0, dataset: str = "", action_steps: int = 0
) -> Any:
    """A saved policy seen through ``dataset`` (what an evaluation worker process plays)."""
    from .evaluation.parallel import load_saved_policy

    return for_dataset(load_saved_policy(model_dir, device, steps, action_steps), dataset)
