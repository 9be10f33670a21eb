"""The EDM denoiser (Karras et al. 2022): preconditioning around the MoDE transformer.

::

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, phi(c_noise(sigma)), cond)

:class:`EDMDenoiser` is the one place that turns a noise level into the
scalings and the noise embedding ``phi``, builds the sampling plan (schedule,
per-evaluation constants, expert cache), computes the training loss and
samples. The pure maths (scalings, sigma distribution, schedules, samplers)
lives in :mod:`mode_policy.model.diffusion`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .config import MoDEConfig
from .diffusion import (
    DenoiseFn,
    Sampler,
    SamplingSettings,
    edm_scalings,
    make_sampler,
    make_schedule,
    sample_log_logistic_sigma,
    training_target,
)
from .expert_cache import build_layer_cache, expert_cache_unavailable, weights_version
from .guidance import InpaintPrefix
from .lean_sampler import LeanSampler, build_lean_sampler, unsupported_reason
from .moe import FusedExperts, Routing
from .transformer import MoDETransformer

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
"""Sampling precisions (:attr:`EDMDenoiser.precision`) and their dtypes."""


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX)."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


@dataclass(frozen=True)
class NoiseLevel:
    """What the network needs about the noise level of a call: the scalings
    (tensors of shape (B, 1, 1), or host floats for one planned level), the
    noise embedding phi (B, d) or (d,), and the fused experts per MoE layer
    when the expert cache serves this level."""

    c_skip: Tensor | float
    c_out: Tensor | float
    c_in: Tensor | float
    noise_emb: Tensor
    fused: list[FusedExperts] | None = None


@dataclass
class SamplingPlan:
    """Everything about a sampling run that does not depend on the data. Built
    once, reused until its key (settings, mode, device, weights) changes."""

    key: tuple
    sampler: Sampler
    sigmas: Tensor  # (n+1,) schedule ending in 0, on the CPU (samplers read it as host floats)
    eval_sigmas: Tensor  # (M,) where the sampler evaluates the network, high noise first
    noise_emb: Tensor  # (M, d) phi at every evaluation
    levels: list[NoiseLevel]  # one per evaluation
    cache_bytes: int  # what the expert cache owns (0 without it)
    lean: LeanSampler | Any = None  # the eval path's precomputed steps, where it applies (official: its own)

    @property
    def cached(self) -> bool:
        return self.levels[0].fused is not None


class EDMDenoiser(nn.Module):
    """``D(x, sigma, cond)`` around the MoDE transformer ``net`` (the raw network F).

    Reads sigma_data, the training noise distribution and the sampler settings
    from ``config`` (shared with the policy, so edits to it take effect).
    ``use_expert_cache`` (default True; False for token routing, whose experts depend on the
    data) lets noise-routed sampling in eval mode, in both architectures, run each step's
    experts fused, without routers; results are exact. Setting it True for token routing
    raises ConfigError rather than being ignored.
    """

    def __init__(self, config: MoDEConfig) -> None:
        super().__init__()
        self.config = config
        if config.architecture == "official":
            from ..official.network import OfficialTransformer

            self.net = OfficialTransformer(config)
        else:
            self.net = MoDETransformer(config)
        self._use_expert_cache = expert_cache_unavailable(config) is None
        self._precision: str | None = None
        self._plan: SamplingPlan | None = None

    @property
    def use_expert_cache(self) -> bool:
        """Whether eval-mode sampling runs the expert cache (see :mod:`mode_policy.model.expert_cache`)."""
        return self._use_expert_cache

    @use_expert_cache.setter
    def use_expert_cache(self, on: bool) -> None:
        why = expert_cache_unavailable(self.config) if on else None
        if why is not None:
            raise ConfigError(f"use_expert_cache=True: {why}")
        self._use_expert_cache = bool(on)

    @property
    def sigma_data(self) -> float:
        return self.config.sigma_data

    # ------------------------------------------------------------ noise level
    def embed(self, c_noise: Tensor) -> Tensor:
        """phi: c_noise (B,) -> noise embedding (B, d); float32 c_noise rounds once to the weights' dtype."""
        weight = self.net.sigma_embed.weight
        return self.net.sigma_embed(c_noise.float().to(weight.device).unsqueeze(-1).to(weight.dtype))

    def noise_level(self, sigma: Tensor) -> NoiseLevel:
        """Scalings (B, 1, 1) and embedding (B, d) of the noise levels ``sigma`` (B,)."""
        c_skip, c_out, c_in, c_noise = edm_scalings(sigma, self.sigma_data)
        shape = (-1, 1, 1)
        return NoiseLevel(c_skip.view(shape), c_out.view(shape), c_in.view(shape), self.embed(c_noise))

    def raw(self, x: Tensor, level: NoiseLevel, cond: Tensor) -> tuple[Tensor, list[Routing]]:
        """The network output F (B, H, A) for noisy actions ``x`` (B, H, A) and condition tokens (B, n, d)."""
        noise_emb = level.noise_emb.expand(x.shape[0], -1)  # (B, d)
        return self.net(x * level.c_in, noise_emb, cond, level.fused)

    def forward(self, x: Tensor, sigma: Tensor | NoiseLevel, cond: Tensor) -> tuple[Tensor, list[Routing]]:
        """Denoised estimate D (B, H, A) of ``x`` (B, H, A) at noise level ``sigma``
        (B,) (or a planned :class:`NoiseLevel`), and the MoE layers' routings
        (empty for the dense variant and for cached sampling)."""
        level = sigma if isinstance(sigma, NoiseLevel) else self.noise_level(sigma)
        out, routings = self.raw(x, level, cond)
        return x * level.c_skip + out * level.c_out, routings

    # --------------------------------------------------------------- training
    def loss(self, x0: Tensor, cond: Tensor, dims: Tensor | None = None) -> tuple[Tensor, list[Routing]]:
        """Per-token squared error (B, H) of F against its EDM target at noise
        levels drawn from the training distribution, and the routings.

        The error is taken on F, not on D: ``||F - (x0 - c_skip x) / c_out||^2``
        equals the EDM-weighted ``||D - x0||^2 / c_out^2`` without its cancellation.
        ``dims`` (B, A) bool: average each row over its own action dimensions only (rows of a
        narrower dataset padded to the policy's width); None: over all of them.
        """
        cfg = self.config
        b = x0.shape[0]
        sigma = sample_log_logistic_sigma(
            b, cfg.train_sigma_loc, cfg.train_sigma_scale, cfg.sigma_min, cfg.sigma_max, x0.device
        )  # (B,)
        noisy = x0 + torch.randn_like(x0) * sigma.view(b, 1, 1)
        out, routings = self.raw(noisy, self.noise_level(sigma), cond)
        target = training_target(x0, noisy, sigma.view(b, 1, 1), self.sigma_data)
        err = (out.float() - target.float()).pow(2)  # (B, H, A)
        if dims is None:
            return err.mean(-1), routings
        keep = dims.to(torch.float32).unsqueeze(1)  # (B, 1, A)
        return (err * keep).sum(-1) / keep.sum(-1), routings

    # --------------------------------------------------------------- sampling
    use_lean_sampler = True
    """Sample in eval mode with :mod:`mode_policy.model.lean_sampler` (or, for the official
    architecture, :mod:`mode_policy.official.lean_sampler`) where it applies (same results up to
    float rounding, fewer kernels); False: always the module-by-module path."""

    @property
    def precision(self) -> str | None:
        """The precision of eval-mode sampling: None (default: the weights' own dtype), ``"fp32"``
        or ``"bf16"``. With a dtype other than the weights', the lean sampler holds a copy of the
        weights it reads in that dtype (each expert bank cast once) and runs the network in it;
        the sampler's state and the skip connection stay float32. That runs on the lean sampler
        only: a plan the lean sampler does not run raises ConfigError rather than silently
        sampling in the weights' dtype."""
        return self._precision

    @precision.setter
    def precision(self, value: str | None) -> None:
        if value is not None and value not in PRECISIONS:
            raise ConfigError(f"precision={value!r}: choose from {', '.join(PRECISIONS)} (or None)")
        self._precision = value

    def sampling_plan(self, sampling: SamplingSettings | None = None) -> SamplingPlan:
        """The (cached) plan for the configured sampler and schedule, with ``sampling``'s settings
        on top; rebuilt when the schedule, the step count, the mode or the weights change."""
        cfg = self.config if sampling is None else sampling.resolve(self.config)
        net = self.net
        cached = self.use_expert_cache and cfg.routing == "noise" and not self.training
        lean = self.use_lean_sampler and not self.training
        device = net.sigma_embed.weight.device
        key = (
            cfg.sampler,
            cfg.schedule,
            cfg.num_inference_steps,
            cfg.sigma_min,
            cfg.sigma_max,
            cfg.karras_rho,
            cfg.sigma_data,
            cached,
            lean,
            self.precision,
            device,
            weights_version([net] if lean else [net.sigma_embed, *net.moe_layers()]),  # lean: reads every weight
        )
        if self._plan is not None and self._plan.key == key:
            return self._plan
        sampler = make_sampler(cfg.sampler)
        sigmas = make_schedule(cfg.schedule, cfg.num_inference_steps, cfg.sigma_min, cfg.sigma_max, cfg.karras_rho)
        eval_sigmas = sampler.eval_sigmas(sigmas)  # (M,)
        c_skip, c_out, c_in, c_noise = edm_scalings(eval_sigmas.double(), cfg.sigma_data)  # each (M,)
        # normal tensors even when built in inference mode (the server's): guided sampling takes
        # a vector-Jacobian product through the plan's tensors, which inference tensors refuse
        with torch.inference_mode(False), torch.no_grad():
            noise_emb = self.embed(c_noise)  # (M, d)
            fused: list[list[FusedExperts] | None] = [None] * len(eval_sigmas)
            cache_bytes = 0
            if cached:
                per_layer = [build_layer_cache(layer, noise_emb) for layer in net.moe_layers()]
                fused = [list(step) for step in zip(*(steps for steps, _ in per_layer))]
                cache_bytes = sum(owned for _, owned in per_layer)
        levels = [  # host-float scalings: one multiply per step, no device tensors to broadcast
            NoiseLevel(skip, out, scale_in, noise_emb[j], fused[j])
            for j, (skip, out, scale_in) in enumerate(zip(c_skip.tolist(), c_out.tolist(), c_in.tolist()))
        ]
        plan = SamplingPlan(key, sampler, sigmas, eval_sigmas, noise_emb, levels, cache_bytes)
        dtype = PRECISIONS[self.precision] if self.precision else net.sigma_embed.weight.dtype
        if lean:
            with torch.inference_mode(False):
                if cfg.architecture == "official":
                    from ..official.lean_sampler import build_official_lean_sampler

                    plan.lean = build_official_lean_sampler(self, plan, dtype)
                else:
                    plan.lean = build_lean_sampler(self, plan, dtype)
        if dtype != net.sigma_embed.weight.dtype and plan.lean is None:
            raise ConfigError(
                f"precision={self.precision!r} runs on the lean sampler, which does not run this plan "
                f"({self._no_lean_reason(plan, lean)}); use precision='fp32'"
            )
        if dtype == torch.bfloat16 and device.type == "cpu" and not cpu_has_bf16():
            warnings.warn(
                "precision='bf16' on a CPU without AVX512-BF16 or AMX: its bfloat16 matrix multiplies "
                "are emulated and slower than float32 here",
                stacklevel=2,
            )
        self._plan = plan
        return plan

    def _no_lean_reason(self, plan: SamplingPlan, lean: bool) -> str:
        if not lean:
            return "training mode" if self.training else "use_lean_sampler=False"
        if not plan.cached:
            return "the expert cache is off"
        return unsupported_reason(self, plan) or "unsupported configuration"

    @torch.no_grad()
    def sample(
        self,
        cond: Tensor,
        noise: Tensor | None = None,
        sampling: SamplingSettings | None = None,
        inpaint: InpaintPrefix | None = None,
    ) -> Tensor:
        """Normalised action chunk (B, H, A) for condition tokens (B, n, d); ``noise``
        (B, H, A) fixes the initial standard-normal draw (scaled by sigma_max here); ``sampling``
        overrides the config's sampling settings for this call; ``inpaint`` guides the chunk
        toward a normalised prefix (real-time chunking, :mod:`mode_policy.model.guidance`), every
        sampler, on the lean or the module path as without it (the expert cache stays on)."""
        cfg = self.config
        plan = self.sampling_plan(sampling)
        if noise is None:
            noise = torch.randn(cond.shape[0], cfg.horizon, cfg.action_dim, device=cond.device, dtype=cond.dtype)
        x = noise * (cfg.sigma_max if sampling is None or sampling.sigma_max is None else sampling.sigma_max)
        if inpaint is None:
            if plan.lean is not None:
                return plan.lean.sample(cond, x, plan.sampler, plan.sigmas)
            return plan.sampler.run(lambda x, j: self(x, plan.levels[j], cond)[0], x, plan.sigmas)
        eval_sigmas = plan.eval_sigmas.tolist()

        def guide(denoise: DenoiseFn) -> DenoiseFn:
            return inpaint.guide(denoise, eval_sigmas, cfg.sigma_data)

        if plan.lean is not None:
            return plan.lean.sample(cond, x, plan.sampler, plan.sigmas, guide=guide)
        return plan.sampler.run(guide(lambda x, j: self(x, plan.levels[j], cond)[0]), x, plan.sigmas)
