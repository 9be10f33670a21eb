"""Evaluation in simulation: one result schema, one policy protocol, one module per benchmark
(:mod:`.metaworld`, :mod:`.libero`, :mod:`.calvin`)."""

from .protocol import Policy, PolicyConfig
from .result import EvalResult, TaskResult, wilson_interval

__all__ = ["EvalResult", "Policy", "PolicyConfig", "TaskResult", "wilson_interval"]
