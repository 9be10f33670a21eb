"""Sampling settings an evaluation prescribes (CALVIN's official 5 steps with sigma_min = 1.0, a
``--steps`` flag, a shorter execution horizon), passed to the policy with every call: the policy's
config is never edited."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ..errors import ConfigError
from ..model.diffusion import SAMPLING_FIELDS, SamplingSettings
from .protocol import Policy


class EffectiveConfig:
    """A read-only view of a policy's config with the settings a run plays with on top (what the
    evaluators read and record: ``n_action_steps``, ``num_inference_steps``, ...)."""

    def __init__(self, config: Any, overrides: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_config", config)
        object.__setattr__(self, "_overrides", dict(overrides))

    def __getattr__(self, name: str) -> Any:
        overrides = object.__getattribute__(self, "_overrides")
        return overrides[name] if name in overrides else getattr(object.__getattribute__(self, "_config"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise ConfigError(f"cannot set {name}: a policy's config is fixed once built (pass settings with each call)")

    def to_dict(self) -> dict[str, Any]:
        return {**self._config.to_dict(), **self._overrides}


class SampledPolicy:
    """``policy`` sampling every chunk with ``sampling`` and executing ``n_action_steps`` actions of
    it (None: the policy's own); everything else is the policy's. Its ``config`` shows the
    settings in effect."""

    def __init__(self, policy: Any, sampling: SamplingSettings | None = None, n_action_steps: int | None = None):
        self.policy, self.sampling, self.n_action_steps = policy, sampling, n_action_steps
        overrides = {} if sampling is None else sampling.overrides()
        if n_action_steps:
            overrides["n_action_steps"] = n_action_steps
        self.config = EffectiveConfig(policy.config, overrides)

    def predict_action_chunk(self, batch: Mapping[str, Any], *args: Any, **kwargs: Any) -> Tensor:
        return self.policy.predict_action_chunk(batch, *args, **{"sampling": self.sampling, **kwargs})

    def select_action(self, observation: Mapping[str, Any], **kwargs: Any) -> Tensor:
        settings = {"sampling": self.sampling, "n_action_steps": self.n_action_steps}
        return self.policy.select_action(observation, **{**settings, **kwargs})

    def reset(self) -> None:
        self.policy.reset()

    def train(self, mode: bool = True) -> SampledPolicy:
        self.policy.train(mode)
        return self

    def eval(self) -> SampledPolicy:
        return self.train(False)

    def __getattr__(self, name: str) -> Any:  # config, training, parameters, goal_encoder, ...
        return getattr(self.policy, name)


def with_sampling_settings(policy: Policy, n_action_steps: int = 0, **values: Any) -> tuple[Policy, dict[str, Any]]:
    """``policy`` wrapped to sample with the non-None ``values`` (fields of :class:`SamplingSettings`)
    its config has (a policy that does not sample by diffusion has none) and to execute
    ``n_action_steps`` actions per chunk (0: its own); ConfigError for an unknown field or a value
    the policy's config refuses. Returns the policy to run and the settings applied."""
    unknown = set(values) - set(SAMPLING_FIELDS)
    if unknown:
        raise ConfigError(f"unknown sampling setting(s) {sorted(unknown)}; known: {list(SAMPLING_FIELDS)}")
    config = policy.config
    applied = {k: v for k, v in values.items() if v is not None and hasattr(config, k)}
    if isinstance(policy, SampledPolicy):  # settings on settings: the newer win, one wrapper
        earlier = policy.sampling.overrides() if policy.sampling is not None else {}
        sampling = SamplingSettings(**{**earlier, **applied}) if earlier or applied else None
        n_action_steps = n_action_steps or policy.n_action_steps or 0
        policy = policy.policy
    else:
        sampling = SamplingSettings(**applied) if applied else None
    if sampling is not None:
        _check(policy, sampling)
    if n_action_steps and n_action_steps > config.horizon:
        raise ConfigError(f"action_steps={n_action_steps}: the policy predicts chunks of {config.horizon} actions")
    if sampling is None and not n_action_steps:
        return policy, applied
    return SampledPolicy(policy, sampling, n_action_steps or None), applied


def _check(policy: Any, sampling: SamplingSettings) -> None:
    """ConfigError now, not at the first chunk, for settings the policy's config refuses."""
    config = getattr(policy, "policy", policy).config  # a dataset view's policy holds the real config
    if dataclasses.is_dataclass(config):
        sampling.resolve(config)
