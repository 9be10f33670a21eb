"""Guided chunk sampling for real-time chunking (RTC, Black et al. 2025): sample the next action
chunk so that its first actions are the ones the robot executes while it is being computed, and
the actions after them stay close to what the current chunk planned.

Everything here works in *normalised* action space, on the sampler's denoiser
``D(x, sigma) -> x0 estimate``; :meth:`MoDEPolicy.predict_action_chunk
<mode_policy.policy.MoDEPolicy.predict_action_chunk>` normalises the prefix the user gives in
action units and calls :meth:`EDMDenoiser.sample <mode_policy.model.edm.EDMDenoiser.sample>`
with an :class:`InpaintPrefix`.

The target ``y`` (B, H, A) is the previous chunk's remainder (P <= H actions, zero beyond), and
the weights ``W`` (B, H, A) are 1 on the first ``delay`` rows (frozen), decay over the rest of
the overlap (rows ``delay .. P-1``, RTC's eq. 5) and are 0 after it (free). Each network
evaluation's denoised estimate ``D`` becomes, for every sampler:

* ``method="replace"`` (the default): ``D' = D + W (y - D)``, no gradient;
* ``method="pigdm"`` (RTC's guidance, PiGDM of Song et al. 2023):
  ``D' = D + lambda(sigma) J^T W (y - D)`` with ``J = dD/dx`` (one vector-Jacobian product per
  evaluation) and ``lambda(sigma) = min(beta sigma / sigma_d, 1 + sigma^2 / sigma_d^2)``: RTC's
  flow-matching weight ``min(beta, (1 - tau) / (tau r_tau^2))`` rewritten for EDM
  (``sigma = (1 - tau) / tau``; ``sigma_d = 1`` gives RTC's formula exactly).

In both, the frozen rows of ``D'`` are then ``y`` itself. A denoised estimate equal to ``y`` on a
row keeps that row of ``x`` on ``y + sigma * noise`` under every sampler here (DDIM, Euler, Heun,
DPM-Solver++(2M) are all exact for a constant denoiser), so the network sees the frozen actions
correctly noised at every step and the chunk ends on them (to float rounding; the policy then sets
them exactly). With zero weights and no frozen row, ``D' = D`` bit for bit: the guided sampler is
the unguided one.

Why replacement is the default: MoDE's transformer is causal over the action tokens, so
``J^T W (y - D)`` reaches only the rows at or before the guided ones; the frozen rows' errors can
only be corrected on the frozen rows themselves, which replacement does exactly, and what is left
for the gradient is the weak pull of the soft rows. PiGDM costs a backward pass per network
evaluation (more than twice the chunk's time on a CPU), which lengthens the very delay it is there
to hide. The realtime-chunking guide has the comparison.

The guidance wraps the sampler's ``denoise(x, j)``; the network evaluation under it is unchanged
(the lean sampler or the module path, with the expert cache), so the cache stays exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from .diffusion import DenoiseFn

GUIDANCE_METHODS = ("pigdm", "replace")
WEIGHT_SCHEDULES = ("exp", "linear", "ones", "zeros")


@dataclass(frozen=True)
class GuidanceSettings:
    """How a chunk is guided toward a prefix (passed as a value, like
    :class:`~mode_policy.model.diffusion.SamplingSettings`)."""

    method: str = "replace"
    """'replace' (the denoised estimate blended toward the prefix with the weights, no gradient)
    or 'pigdm' (RTC's guidance: a vector-Jacobian product per network evaluation, more than twice
    the cost)."""
    schedule: str = "exp"
    """Weights of the soft overlap after the frozen actions: 'exp' (RTC's eq. 5), 'linear',
    'ones' or 'zeros' (only the frozen actions are guided)."""
    max_weight: float = 5.0
    """beta, the clip of the PiGDM guidance weight."""

    def __post_init__(self) -> None:
        if self.method not in GUIDANCE_METHODS:
            raise ConfigError(f"guidance method {self.method!r}: choose from {', '.join(GUIDANCE_METHODS)}")
        if self.schedule not in WEIGHT_SCHEDULES:
            raise ConfigError(f"guidance schedule {self.schedule!r}: choose from {', '.join(WEIGHT_SCHEDULES)}")
        if not (math.isfinite(self.max_weight) and self.max_weight >= 0):
            raise ConfigError(f"guidance max_weight={self.max_weight} must be a finite number >= 0")


def overlap_weights(horizon: int, overlap: int, delay: Tensor, schedule: str = "exp") -> Tensor:
    """Guidance weights (B, H): 1 on rows ``< delay`` (per row of ``delay`` (B,)), the schedule's
    decay on rows ``delay .. overlap - 1``, 0 from ``overlap`` on. RTC's eq. 5 ('exp'):
    ``c_i (e^{c_i} - 1) / (e - 1)`` with ``c_i = (overlap - i) / (overlap - delay + 1)``."""
    i = torch.arange(horizon, dtype=torch.float64).unsqueeze(0)  # (1, H)
    d = delay.to(torch.float64).unsqueeze(1)  # (B, 1)
    c = (overlap - i) / (overlap - d + 1)  # (B, H), in (0, 1) on the soft rows
    if schedule == "exp":
        soft = c * torch.expm1(c) / math.expm1(1.0)
    elif schedule == "linear":
        soft = c
    elif schedule == "ones":
        soft = torch.ones_like(c)
    elif schedule == "zeros":
        soft = torch.zeros_like(c)
    else:
        raise ConfigError(f"guidance schedule {schedule!r}: choose from {', '.join(WEIGHT_SCHEDULES)}")
    weights = torch.where(i < d, 1.0, torch.where(i < overlap, soft, 0.0))
    return weights.float()


def pigdm_weight(sigma: float, sigma_data: float, max_weight: float) -> float:
    """``lambda(sigma) = min(beta sigma / sigma_d, 1 + sigma^2 / sigma_d^2)``: the PiGDM weight of
    ``J^T W (y - D)`` in the denoised estimate (see the module docstring)."""
    s = sigma / sigma_data
    return min(max_weight * s, 1.0 + s * s)


@dataclass(frozen=True)
class InpaintPrefix:
    """What guided sampling needs, normalised: the target ``y`` (B, H, A) (the prefix, zero
    after it), the weights ``W`` (B, H, A) and the frozen rows (B, H, 1) bool. Build with
    :meth:`build`."""

    target: Tensor
    weights: Tensor
    frozen: Tensor
    settings: GuidanceSettings

    @classmethod
    def build(
        cls,
        prefix: Tensor,
        delay: Tensor,
        horizon: int,
        settings: GuidanceSettings | None = None,
        dims: Tensor | None = None,
    ) -> InpaintPrefix:
        """From a normalised ``prefix`` (B, P, A) (P <= horizon), the frozen actions per row
        ``delay`` (B,) (each <= P) and, for a mixture policy, the mask (B, A) of each row's own
        action dimensions (the padding is not guided)."""
        settings = settings or GuidanceSettings()
        b, p, a = prefix.shape
        target = prefix.new_zeros(b, horizon, a)
        target[:, :p] = prefix
        delay = delay.to(prefix.device)
        weights = overlap_weights(horizon, p, delay.cpu(), settings.schedule).to(prefix.device, prefix.dtype)
        weights = weights.unsqueeze(-1).expand(b, horizon, a)  # (B, H, A)
        if dims is not None:
            weights = weights * dims.to(weights.dtype).unsqueeze(1)
        frozen = (torch.arange(horizon, device=prefix.device).unsqueeze(0) < delay.unsqueeze(1)).unsqueeze(-1)
        return cls(target, weights.contiguous(), frozen, settings)

    def guide(self, denoise: DenoiseFn, eval_sigmas: Sequence[float], sigma_data: float) -> DenoiseFn:
        """``denoise`` (``(x, j) -> D``, evaluation ``j`` at noise level ``eval_sigmas[j]``) guided
        toward the target (see the module docstring)."""
        target, weights, frozen = self.target, self.weights, self.frozen
        if self.settings.method == "replace":

            def replaced(x: Tensor, j: int) -> Tensor:
                d = denoise(x, j)
                return torch.where(frozen, target, d + weights * (target - d))

            return replaced

        lam = [pigdm_weight(float(s), sigma_data, self.settings.max_weight) for s in eval_sigmas]

        def guided(x: Tensor, j: int) -> Tensor:
            # out of inference mode (the server's forwards run in it): the vector-Jacobian product
            # needs a graph; x is cloned into a normal tensor that records one
            with torch.inference_mode(False), torch.enable_grad():
                xg = x.detach().clone().requires_grad_(True)
                d = denoise(xg, j)
                with torch.no_grad():
                    err = weights * (target - d)
                (vjp,) = torch.autograd.grad(d, xg, err)
            with torch.no_grad():
                return torch.where(frozen, target, d.detach() + lam[j] * vjp)

        return guided


# ------------------------------------------------------------------ checking a prefix
def check_prefix(prefix: Any, delay: Any, rows: int, horizon: int, action_dim: int, wire: bool = False) -> np.ndarray:
    """Check a prefix (B, P, A) in action units (a float tensor or numpy array; only numpy when
    ``wire``) and its ``delay`` (an int for every row, or one int per row) for a batch of ``rows``
    rows of a policy with chunks of ``horizon`` actions of width ``action_dim``; DataError naming
    the problem. Returns the delays (B,) int64."""
    kind = "a numpy array" if wire else "a tensor or numpy array"
    if isinstance(prefix, np.ndarray):
        shape, is_float = tuple(prefix.shape), prefix.dtype.kind == "f"
        finite = bool(np.isfinite(prefix).all()) if is_float else True
    elif not wire and torch.is_tensor(prefix):
        shape, is_float = tuple(prefix.shape), prefix.is_floating_point()
        finite = bool(torch.isfinite(prefix).all()) if is_float else True
    else:
        raise DataError(f"prefix must be {kind} (B, P, {action_dim}) of actions, got {type(prefix).__name__}")
    want = f"(B={rows}, P, {action_dim}) with 1 <= P <= horizon={horizon}"
    if not is_float:
        raise DataError(f"prefix must be a float array {want}, got dtype {prefix.dtype}")
    if len(shape) != 3 or shape[0] != rows or shape[2] != action_dim or not 1 <= shape[1] <= horizon:
        raise DataError(f"prefix has shape {shape}, expected {want}")
    if not finite:
        raise DataError("prefix contains NaN or inf")
    if isinstance(delay, (bool, np.bool_)):
        raise DataError(f"delay must be an integer or a list of {rows} integers, got {delay!r}")
    if torch.is_tensor(delay):
        delay = delay.cpu().numpy()
    values = np.asarray(delay)
    if values.ndim == 0:
        values = np.full(rows, values)
    if values.dtype.kind not in "iu" or values.ndim != 1 or len(values) != rows:
        raise DataError(f"delay must be an integer or a list of {rows} integers (one per row), got {delay!r}")
    p = shape[1]
    if (values < 0).any() or (values > p).any():
        raise DataError(f"delay {values.tolist()} must be in [0, P={p}]: the frozen actions are the prefix's first")
    return values.astype(np.int64)
