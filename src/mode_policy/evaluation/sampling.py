"""Sampling settings an evaluation protocol prescribes (e.g. CALVIN's official 5 steps with
sigma_min = 1.0), applied to a policy for the length of a run."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ..errors import ConfigError
from .protocol import Policy

SAMPLING_FIELDS = ("num_inference_steps", "sigma_min")


@contextlib.contextmanager
def sampling_overrides(policy: Policy, **values: Any) -> Iterator[dict[str, Any]]:
    """Set ``policy.config.<field> = value`` for each non-None value of the fields in
    :data:`SAMPLING_FIELDS` the config has (a policy that does not sample by diffusion has
    none), check the result with ``config.validate()`` where there is one, and restore the
    old values after the block. Yields the values that were applied."""
    unknown = set(values) - set(SAMPLING_FIELDS)
    if unknown:
        raise ConfigError(f"unknown sampling setting(s) {sorted(unknown)}; known: {list(SAMPLING_FIELDS)}")
    config = policy.config
    applied = {k: v for k, v in values.items() if v is not None and hasattr(config, k)}
    old = {k: getattr(config, k) for k in applied}
    try:
        for key, value in applied.items():
            setattr(config, key, value)
        if applied and callable(getattr(config, "validate", None)):
            config.validate()
        yield applied
    finally:
        for key, value in old.items():
            setattr(config, key, value)
