"""A benchmark control: a dense sampler with the weight footprint of a cached MoDE chunk.

At batch 1 a cached MoDE chunk reads every expert its steps route to (``chunk_expert_union`` in
:mod:`mode_policy.bench`: all 4 of every layer for the ``cpu`` preset, 2x the MLP weights of the
dense model with the same active parameters), though each step reads only its own. The control
is that dense model reading several copies of its MLP weights over a chunk, so its time over
the dense model's is what the footprint alone costs on a machine (``bench latency`` prints it).
"""

from __future__ import annotations

import copy
import math

import torch

from ..errors import ConfigError
from ..model.diffusion import Sampler
from ..model.lean_sampler import LeanSampler
from ..policy import MoDEPolicy


class FootprintControl:
    """A dense lean sampler whose evaluations read ``copies`` distinct copies of its MLP weights,
    evaluation ``j`` of ``n`` copy ``j * copies // n`` (consecutive steps share one, as noise-routed
    steps share experts). Actions, operations and bytes per evaluation are those of ``lean``; only
    the weights a whole chunk touches grow ``copies``-fold: at batch 1 a cached MoDE chunk reads every
    expert it routes to over the chunk (``chunk_expert_union``), where a dense twin reads one MLP."""

    def __init__(self, lean: LeanSampler, copies: int) -> None:
        if copies < 1 or any(layer.dense is None for layer in lean.layers):
            raise ConfigError(f"FootprintControl needs a dense lean sampler and copies >= 1 (got {copies})")
        self.copies = copies
        self.samplers = [lean]
        for _ in range(copies - 1):
            clone = copy.copy(lean)
            clone.layers = [layer._replace(dense=tuple(w.clone() for w in layer.dense)) for layer in lean.layers]
            self.samplers.append(clone)

    def copy_of(self, j: int) -> int:
        """The weight copy evaluation ``j`` reads."""
        return j * self.copies // len(self.samplers[0].steps)

    def sample(self, cond: torch.Tensor, x: torch.Tensor, sampler: Sampler, sigmas: torch.Tensor) -> torch.Tensor:
        """As :meth:`LeanSampler.sample`."""
        prefix, action_pos = self.samplers[0].chunk_rows(cond, x.shape[1])
        return sampler.run(lambda x, j: self.samplers[self.copy_of(j)].denoise(x, j, prefix, action_pos), x, sigmas)


def footprint_control(dense: MoDEPolicy, mlp_bytes_over_dense: float) -> MoDEPolicy:
    """``dense`` (a dense policy on the lean sampler, in eval mode) made to read
    ``ceil(mlp_bytes_over_dense)`` copies of its MLP weights per chunk (:class:`FootprintControl`);
    returns a new policy, ``dense`` is left as it was."""
    control = copy.deepcopy(dense)
    plan = control.denoiser.sampling_plan()
    if plan.lean is None:
        raise ConfigError("footprint_control needs a policy that samples on the lean sampler")
    plan.lean = FootprintControl(plan.lean, max(1, math.ceil(mlp_bytes_over_dense - 1e-9)))
    return control
