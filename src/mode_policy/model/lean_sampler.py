"""The lean sampler: the eval path of :meth:`EDMDenoiser.sample` as one flat sequence of
tensor operations, with what does not depend on the data computed once per plan.

The module-by-module path (``EDMDenoiser.forward`` -> ``MoDETransformer`` -> blocks ->
attention, norms, experts) pays Python and ``nn.Module`` dispatch for every call, and
redoes per step what depends only on the step. Here, per plan:

* the noise token ``phi_j + pos_0`` of every step (the first row of the sequence);
* ``phi_j`` as the (1, 1, d) row the noise-conditioned attention adds;
* the EDM scalings ``c_in``, ``c_skip``, ``c_out`` as host floats;
* the expert cache's fused experts (views of the expert bank, see
  :mod:`mode_policy.model.expert_cache`);
* with another ``dtype`` (``EDMDenoiser.precision = "bf16"``), every weight cast once (the fused
  experts are views of the cast banks); the sampler's state and the skip connection stay float32;

and per chunk (the same at every step): the condition tokens plus their positional
embeddings. A step then runs the same tensor operations as the module path, in the same
order on the same values, so the actions are bitwise identical to it (see
``tests/test_cached_sampler.py``): only the dispatch goes.

It runs for noise-routed MoDE with the expert cache and for the dense variant, with or
without the noise token, with attention or no noise conditioning. Every other
configuration (token routing, a shared expert, FiLM, a config field this module does not
know at a non-default value, a network holding a parameter it would not read) gets ``None``
from :func:`build_lean_sampler` and samples on the module path. The official architecture
has its own, :mod:`mode_policy.official.lean_sampler`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import MoDEConfig
from .diffusion import DenoiseFn, Sampler
from .layers import swiglu
from .moe import FusedExperts, MoELayer

if TYPE_CHECKING:  # edm imports this module
    from .edm import EDMDenoiser, SamplingPlan

HANDLED_FIELDS = frozenset(
    {
        # shapes, encoders and training-only settings: the lean sampler starts after the encoders
        "state_dim",
        "action_dim",
        "goal_dim",
        "n_obs_steps",
        "horizon",
        "n_action_steps",
        "image_keys",
        "image_size",
        "vision_depth",
        "vision_width",
        "vision_pretrained",
        "image_shift_pad",
        "attn_dropout",
        "resid_dropout",
        "init_std",
        "balance_loss_weight",
        "freeze_router",
        "goal_encoder",
        "goal_dropout",
        "state_encoder_hidden",
        "state_groups",
        "train_sigma_loc",
        "train_sigma_scale",
        # read from the modules or the plan
        "n_layers",
        "d_model",
        "n_heads",
        "causal",
        "num_experts",
        "top_k",
        "mlp_ratio",
        "dense_mlp_ratio",
        "sigma_data",
        "sigma_min",
        "sigma_max",
        "sampler",
        "schedule",
        "num_inference_steps",
        "karras_rho",
        # checked in unsupported_reason
        "routing",
        "shared_expert",
        "noise_token",
        "noise_conditioning",
    }
)
"""MoDEConfig fields whose every value this module handles or checks; any other field must
hold its default value, or the module path samples (a new switch is never guessed at)."""

_READ_PARAMS = frozenset(
    {
        "sigma_embed.weight",
        "sigma_embed.bias",
        "pos_emb",
        "action_in.weight",
        "action_in.bias",
        "norm_out.weight",
        "action_out.weight",
        "action_out.bias",
        # per block, without "blocks.<i>." (routers: through the expert cache; mlp.w13/w2: the dense MLP)
        "norm1.weight",
        "attn.qkv.weight",
        "attn.proj.weight",
        "attn.q_norm.weight",
        "attn.k_norm.weight",
        "norm2.weight",
        "mlp.w13",
        "mlp.w2",
        "mlp.router.net.0.weight",
        "mlp.router.net.0.bias",
        "mlp.router.net.2.weight",
        "mlp.router.net.2.bias",
        "mlp.experts.w13",
        "mlp.experts.w2",
    }
)
"""The network parameters the lean sampler accounts for; a network with any other runs the module path."""


def unsupported_reason(denoiser: EDMDenoiser, plan: SamplingPlan) -> str | None:
    """Why the lean sampler does not run ``plan`` of ``denoiser`` (None: it does)."""
    cfg = denoiser.config
    if denoiser.training:
        return "training mode"
    if cfg.routing == "token":
        return "token routing (the experts depend on the data)"
    if cfg.routing == "noise" and not plan.cached:
        return "the expert cache is off"
    if cfg.shared_expert:
        return "shared_expert=True"
    if cfg.noise_conditioning not in ("attention", "none"):
        return f"noise_conditioning={cfg.noise_conditioning!r}"
    defaults = MoDEConfig()
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if field.name not in HANDLED_FIELDS and value != getattr(defaults, field.name):
            return f"{field.name}={value!r} (a setting the lean sampler does not know)"
    for name, _ in denoiser.net.named_parameters():
        if (name.split(".", 2)[2] if name.startswith("blocks.") else name) not in _READ_PARAMS:
            return f"the network has a parameter the lean sampler does not read: {name}"
    return None


class _Layer(NamedTuple):
    """One block's weights (detached parameters) and settings."""

    norm1: Tensor  # (d,)
    eps1: float
    qkv: Tensor  # (3d, d)
    q_norm: Tensor  # (hd,)
    k_norm: Tensor  # (hd,)
    eps_qk: tuple[float, float]
    proj: Tensor  # (d, d)
    norm2: Tensor  # (d,)
    eps2: float
    dense: tuple[Tensor, Tensor] | None  # the dense MLP's w13 (d, 2h), w2 (h, d); None: experts


class _Step(NamedTuple):
    """One network evaluation's constants."""

    noise_token: Tensor | None  # (1, 1, d): phi_j + pos_0 (None without a noise token)
    phi: Tensor | None  # (1, 1, d): what the attention input adds (None without noise conditioning)
    c_in: float
    c_skip: float
    c_out: float
    experts: list[FusedExperts | None]  # per layer: this step's fused experts (None: dense MLP)


class LeanSampler:
    """Runs a sampling plan's network evaluations as flat tensor code (see module docstring).
    Build with :func:`build_lean_sampler`; valid for the plan and weights it was built from."""

    def __init__(self, denoiser: EDMDenoiser, plan: SamplingPlan, dtype: torch.dtype = torch.float32) -> None:
        net, cfg = denoiser.net, denoiser.config
        d = net.pos_emb.shape[-1]
        self.d, self.dtype = d, dtype

        def w(t: Tensor) -> Tensor:  # a weight as this sampler reads it: the parameter, or a cast copy
            return t.detach().to(dtype)

        self.n_heads = net.blocks[0].attn.n_heads
        self.causal = net.blocks[0].attn.causal
        self.pos = w(net.pos_emb)  # (1, T, d)
        self.offset = 1 if cfg.noise_token else 0  # row of the first condition token
        self.action_in = (w(net.action_in.weight), w(net.action_in.bias))
        self.norm_out = (w(net.norm_out.weight), net.norm_out.eps)
        self.action_out = (w(net.action_out.weight), w(net.action_out.bias))
        self.layers = [
            _Layer(
                w(b.norm1.weight),
                b.norm1.eps,
                w(b.attn.qkv.weight),
                w(b.attn.q_norm.weight),
                w(b.attn.k_norm.weight),
                (b.attn.q_norm.eps, b.attn.k_norm.eps),
                w(b.attn.proj.weight),
                w(b.norm2.weight),
                b.norm2.eps,
                None if isinstance(b.mlp, MoELayer) else (w(b.mlp.w13), w(b.mlp.w2)),
            )
            for b in net.blocks
        ]
        conditioned = cfg.noise_conditioning == "attention"
        banks = {  # each expert bank cast once; the steps' fused experts become views of the cast banks
            bank.untyped_storage().data_ptr(): (bank, w(bank))
            for layer in net.moe_layers()
            for bank in (layer.experts.w13, layer.experts.w2)
        }
        self.steps = []
        for level in plan.levels:
            phi = w(level.noise_emb).view(1, 1, d)
            self.steps.append(
                _Step(
                    noise_token=phi + self.pos[:, :1] if cfg.noise_token else None,
                    phi=phi if conditioned else None,
                    c_in=level.c_in,
                    c_skip=level.c_skip,
                    c_out=level.c_out,
                    experts=(
                        [_cast_fused(f, banks, dtype) for f in level.fused]
                        if level.fused is not None
                        else [None] * len(self.layers)
                    ),
                )
            )

    def sample(
        self,
        cond: Tensor,
        x: Tensor,
        sampler: Sampler,
        sigmas: Tensor,
        guide: Callable[[DenoiseFn], DenoiseFn] | None = None,
    ) -> Tensor:
        """Normalised actions (B, H, A) from ``x`` (B, H, A) at sigma_max, for condition tokens
        (B, n, d); ``guide`` wraps the denoiser (guided sampling, :mod:`mode_policy.model.guidance`)."""
        prefix, action_pos = self.chunk_rows(cond, x.shape[1])

        def denoise(x: Tensor, j: int) -> Tensor:
            return self.denoise(x, j, prefix, action_pos)

        return sampler.run(denoise if guide is None else guide(denoise), x, sigmas)

    def chunk_rows(self, cond: Tensor, horizon: int) -> tuple[Tensor, Tensor]:
        """What every step of a chunk shares: the condition tokens plus their positional
        embeddings (B, n, d), and the action rows' positional embeddings (1, H, d)."""
        start = self.offset + cond.shape[1]
        return cond.to(self.dtype) + self.pos[:, self.offset : start], self.pos[:, start : start + horizon]

    def denoise(self, x: Tensor, j: int, prefix: Tensor, action_pos: Tensor) -> Tensor:
        """D(x, sigma_j) (B, H, A) at evaluation ``j``: ``c_skip x + c_out F(c_in x)``."""
        step = self.steps[j]
        b, horizon, _ = x.shape
        d, heads = self.d, self.n_heads
        rows = [prefix, F.linear((x * step.c_in).to(self.dtype), *self.action_in) + action_pos]
        if step.noise_token is not None:
            rows.insert(0, step.noise_token.expand(b, 1, d))
        h = torch.cat(rows, dim=1)  # (B, T, d)
        t = h.shape[1]
        for layer, fused in zip(self.layers, step.experts):
            a = F.rms_norm(h, (d,), layer.norm1, layer.eps1)
            if step.phi is not None:
                a = a + step.phi
            q, k, v = F.linear(a, layer.qkv).view(b, t, 3, heads, d // heads).unbind(dim=2)  # (B, T, heads, hd)
            q = F.rms_norm(q, (d // heads,), layer.q_norm, layer.eps_qk[0]).transpose(1, 2)  # (B, heads, T, hd)
            k = F.rms_norm(k, (d // heads,), layer.k_norm, layer.eps_qk[1]).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, k, v.transpose(1, 2), is_causal=self.causal)
            h = h + F.linear(y.transpose(1, 2).reshape(b, t, d), layer.proj)
            a = F.rms_norm(h, (d,), layer.norm2, layer.eps2)
            h = h + (fused(a) if fused is not None else swiglu(a, *layer.dense))
        out = F.linear(F.rms_norm(h[:, t - horizon :], (d,), *self.norm_out), *self.action_out)  # F: (B, H, A)
        return x * step.c_skip + out.to(x.dtype) * step.c_out


def _cast_fused(fused: FusedExperts, banks: dict[int, tuple[Tensor, Tensor]], dtype: torch.dtype) -> FusedExperts:
    """``fused`` with its weights in ``dtype``: the same strided view of the cast bank (``banks``:
    storage pointer -> (tensor, its cast), both dense with the same strides); itself when nothing changes."""
    if fused.w13.dtype == dtype:
        return fused

    def cast(t: Tensor) -> Tensor:  # a copy (k >= 3) is cast once too, for every step that shares it
        bank, cast_bank = banks.setdefault(t.untyped_storage().data_ptr(), (t, t.to(dtype)))
        return cast_bank.as_strided(t.shape, t.stride(), t.storage_offset() - bank.storage_offset())

    return FusedExperts(cast(fused.w13), cast(fused.w2), fused.mix.to(dtype))


def build_lean_sampler(
    denoiser: EDMDenoiser, plan: SamplingPlan, dtype: torch.dtype = torch.float32
) -> LeanSampler | None:
    """The lean sampler for ``plan`` of ``denoiser`` with its network in ``dtype``, or None where
    it does not apply (:func:`unsupported_reason` says why)."""
    if unsupported_reason(denoiser, plan) is not None:
        return None
    with torch.no_grad():
        return LeanSampler(denoiser, plan, dtype)
