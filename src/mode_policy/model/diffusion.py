"""EDM diffusion maths (Karras et al. 2022): preconditioning, noise levels,
training loss target, sigma schedules and samplers.

A *denoiser* here is ``D(x, sigma) -> x0_estimate``. Samplers call it through
``denoise(x, j)``, where ``j`` indexes the list of noise levels at which the
sampler evaluates the network (``Sampler.eval_sigmas``). Knowing that list in
advance is what lets MoDE cache its experts per evaluation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError

DenoiseFn = Callable[[Tensor, int], Tensor]


# --------------------------------------------------------------------------
# Preconditioning
# --------------------------------------------------------------------------
def edm_scalings(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EDM preconditioning coefficients for noise level(s) ``sigma``.

    Returns ``(c_skip, c_out, c_in, c_noise)`` with the shape of ``sigma``:
    ``c_skip = sd^2/(s^2+sd^2)``, ``c_out = s*sd/sqrt(s^2+sd^2)``,
    ``c_in = 1/sqrt(s^2+sd^2)``, ``c_noise = ln(s)/4``.
    """
    sd2 = sigma_data**2
    total = sigma**2 + sd2
    c_skip = sd2 / total
    c_out = sigma * sigma_data / total.sqrt()
    c_in = total.rsqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def training_target(x0: Tensor, noisy: Tensor, sigma: Tensor, sigma_data: float) -> Tensor:
    """Target of the raw network ``F`` so that ``c_skip*x + c_out*F = x0``.

    ``sigma`` broadcasts against ``x0`` (e.g. shape (B, 1, 1)).
    """
    c_skip, c_out, _, _ = edm_scalings(sigma, sigma_data)
    return (x0 - c_skip * noisy) / c_out


# --------------------------------------------------------------------------
# Training noise distribution
# --------------------------------------------------------------------------
def sample_log_logistic_sigma(
    n: int,
    loc: float,
    scale: float,
    sigma_min: float,
    sigma_max: float,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw ``n`` noise levels whose log follows a logistic(loc, scale),
    truncated to ``[sigma_min, sigma_max]`` (exact inverse-CDF sampling)."""

    def cdf(s: float) -> float:
        return 1.0 / (1.0 + math.exp(-(math.log(s) - loc) / scale))

    lo, hi = cdf(sigma_min), cdf(sigma_max)
    u = torch.rand(n, device=device, generator=generator, dtype=torch.float64) * (hi - lo) + lo
    log_sigma = loc + scale * (u.log() - (-u).log1p())
    return log_sigma.exp().clamp(sigma_min, sigma_max).float()


# --------------------------------------------------------------------------
# Sigma schedules (descending, with a trailing 0)
# --------------------------------------------------------------------------
def exponential_schedule(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """``n`` levels evenly spaced in ln(sigma) from sigma_max to sigma_min, then 0."""
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp()
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


def karras_schedule(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022) schedule: evenly spaced in sigma^(1/rho), then 0."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


def make_schedule(name: str, n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    if name == "exponential":
        return exponential_schedule(n, sigma_min, sigma_max)
    if name == "karras":
        return karras_schedule(n, sigma_min, sigma_max, rho)
    raise ConfigError(f"unknown sigma schedule {name!r}")


# --------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------
class Sampler:
    """Base class: ``eval_sigmas`` lists where the network is evaluated and
    ``run`` integrates from ``sigmas[0]`` to 0 calling ``denoise(x, j)``."""

    name = "base"

    def eval_sigmas(self, sigmas: Tensor) -> Tensor:
        return sigmas[:-1]

    def run(self, denoise: DenoiseFn, x: Tensor, sigmas: Tensor) -> Tensor:
        raise NotImplementedError  # pragma: no cover - abstract


class DDIMSampler(Sampler):
    """First-order solver in ``t = -ln sigma`` (DDIM / DPM-Solver-1):
    ``x' = (s'/s) x + (1 - s'/s) D(x, s)``; the step to 0 returns ``D``."""

    name = "ddim"

    def run(self, denoise: DenoiseFn, x: Tensor, sigmas: Tensor) -> Tensor:
        ratios = (sigmas[1:] / sigmas[:-1]).tolist()  # host floats, computed once
        for j, r in enumerate(ratios):
            denoised = denoise(x, j)
            x = torch.lerp(denoised, x, r) if r > 0 else denoised
        return x


class EulerSampler(Sampler):
    """Euler steps of the probability-flow ODE ``dx/ds = (x - D)/s``."""

    name = "euler"

    def run(self, denoise: DenoiseFn, x: Tensor, sigmas: Tensor) -> Tensor:
        s = sigmas.tolist()
        for j in range(len(s) - 1):
            d = (x - denoise(x, j)) / s[j]
            x = x + (s[j + 1] - s[j]) * d
        return x


class HeunSampler(Sampler):
    """Heun's second-order method (EDM Algorithm 1 without churn); the last
    step to sigma=0 is an Euler step."""

    name = "heun"

    def eval_sigmas(self, sigmas: Tensor) -> Tensor:
        out = []
        for i in range(len(sigmas) - 1):
            out.append(sigmas[i])
            if sigmas[i + 1] > 0:
                out.append(sigmas[i + 1])
        return torch.stack(out)

    def run(self, denoise: DenoiseFn, x: Tensor, sigmas: Tensor) -> Tensor:
        s = sigmas.tolist()
        j = 0
        for i in range(len(s) - 1):
            d = (x - denoise(x, j)) / s[i]
            j += 1
            x_next = x + (s[i + 1] - s[i]) * d
            if s[i + 1] > 0:
                d2 = (x_next - denoise(x_next, j)) / s[i + 1]
                j += 1
                x_next = x + (s[i + 1] - s[i]) * 0.5 * (d + d2)
            x = x_next
        return x


class DPMSolverPP2MSampler(Sampler):
    """DPM-Solver++(2M) (Lu et al. 2022): second-order multistep in
    ``t = -ln sigma`` using the previous denoised estimate."""

    name = "dpmpp_2m"

    def run(self, denoise: DenoiseFn, x: Tensor, sigmas: Tensor) -> Tensor:
        s = sigmas.tolist()
        old_denoised = None
        h_last = None
        for i in range(len(s) - 1):
            denoised = denoise(x, i)
            if s[i + 1] == 0:
                x = denoised
                break
            t, t_next = -math.log(s[i]), -math.log(s[i + 1])
            h = t_next - t
            if old_denoised is None:
                d = denoised
            else:
                r = h_last / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (s[i + 1] / s[i]) * x - math.expm1(-h) * d
            old_denoised, h_last = denoised, h
        return x


_SAMPLERS: dict[str, type[Sampler]] = {
    cls.name: cls for cls in (DDIMSampler, EulerSampler, HeunSampler, DPMSolverPP2MSampler)
}


def make_sampler(name: str) -> Sampler:
    if name not in _SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}: choose from {', '.join(_SAMPLERS)}")
    return _SAMPLERS[name]()


# ------------------------------------------------------------------ settings
SAMPLING_FIELDS = ("sampler", "schedule", "num_inference_steps", "sigma_min", "sigma_max", "karras_rho")
"""The policy-config fields that only decide how a chunk is sampled (none changes a weight)."""


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample an action chunk, passed as a value with each call
    (``policy.predict_action_chunk(obs, sampling=SamplingSettings(num_inference_steps=5))``); a
    field left None keeps the policy config's value. The policy's config is never edited."""

    num_inference_steps: int | None = None
    """Sampling steps."""
    sigma_min: float | None = None
    """Smallest noise level of the schedule (CALVIN's official evaluation: 1.0)."""
    sigma_max: float | None = None
    """Largest noise level (the initial draw's scale)."""
    sampler: str | None = None
    """'ddim', 'euler', 'heun' or 'dpmpp_2m'."""
    schedule: str | None = None
    """'exponential' or 'karras'."""
    karras_rho: float | None = None
    """rho of the Karras schedule."""

    def overrides(self) -> dict[str, Any]:
        """The fields that are set."""
        return {name: getattr(self, name) for name in SAMPLING_FIELDS if getattr(self, name) is not None}

    def resolve(self, config: Any) -> Any:
        """``config`` with these settings applied (a new, validated config: ConfigError naming a
        bad value); ``config`` itself when nothing is set."""
        values = self.overrides()
        return dataclasses.replace(config, **values) if values else config
