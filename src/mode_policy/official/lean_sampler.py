"""The lean sampler of the official architecture: the eval path of
:meth:`~mode_policy.model.edm.EDMDenoiser.sample` for ``architecture="official"`` as flat tensor
code over the expert cache, computing only what the actions depend on.

Per plan (the sampling schedule and the weights), for every step ``j``:

* the EDM scalings as host floats, and each layer's fused experts
  (:meth:`~mode_policy.official.network.OfficialMoE.fuse`: views of the expert banks, mixing
  weights as host floats, the shared expert folded in at weight 1);
* the noise token's whole pass. The attention is causal and the noise token comes first, so it
  only ever sees itself: it is a function of ``phi_j`` alone, and its keys and values at every
  layer are constants of the step. The other rows attend to them; the token itself is never run
  on the data;
* the query/key/value biases with ``phi_j`` folded in: ``W (a + phi_j) + b = W a + (W phi_j + b)``.

Per chunk: the goal and camera tokens plus their positions. Per step: the goal, camera and action
rows through every layer, except in the last layer, where the queries, the attention output and
the experts run on the action rows only (nothing reads the others). At the speed harness's shape
(``scripts/bench/official_speed.py``) a chunk costs 0.75x the official code's FLOPs at batch 1,
where its cache hits, and 0.70x at batch 64, where it routes every token.

Weights are read as they are (views), or cast once to ``dtype`` (the ``precision`` option of
:class:`~mode_policy.model.edm.EDMDenoiser`); the sampler's state stays float32. The result is
the module path's function up to float rounding (reassociated sums; ``tests/official/``
bounds cached against uncached at 1e-5).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..model.diffusion import DenoiseFn, Sampler
from .network import OfficialFusedExperts, OfficialRMSNorm, OfficialTransformer

if TYPE_CHECKING:  # edm imports this module
    from ..model.edm import EDMDenoiser, SamplingPlan


class _Norm(NamedTuple):
    weight: Tensor  # (d,)
    eps: float


class _Layer(NamedTuple):
    """One block's weights, cast to the sampler's dtype."""

    norm1: _Norm
    wq: Tensor  # (d, d), nn.Linear orientation
    wk: Tensor
    wv: Tensor
    q_norm: _Norm  # (hd,)
    k_norm: _Norm
    proj: Tensor  # (d, d)
    norm2: _Norm


class _Step(NamedTuple):
    """One network evaluation's constants."""

    c_in: float
    c_skip: float
    c_out: float
    qkv_bias: list[tuple[Tensor, Tensor, Tensor]]  # per layer: W phi_j + b for q, k, v, each (d,)
    kv0: list[tuple[Tensor, Tensor]]  # per layer: the noise token's normalised key and value (1, heads, 1, hd)
    experts: list[OfficialFusedExperts]  # per layer


def rms(x: Tensor, norm: _Norm) -> Tensor:
    """The official RMS norm ``x / max(||x|| / sqrt(d), eps) * g`` over the last dimension."""
    scale = (torch.linalg.vector_norm(x, dim=-1, keepdim=True) * x.shape[-1] ** -0.5).clamp(min=norm.eps)
    return x / scale * norm.weight  # out of place: guided sampling differentiates through it


def _norm(module: OfficialRMSNorm, dtype: torch.dtype) -> _Norm:
    return _Norm(module.weight.detach().to(dtype), module.eps)


class OfficialLeanSampler:
    """Runs a sampling plan of an official-architecture denoiser (see module docstring). Build
    with :func:`build_official_lean_sampler`; valid for the plan and weights it was built from."""

    def __init__(self, denoiser: EDMDenoiser, plan: SamplingPlan, dtype: torch.dtype = torch.float32) -> None:
        net: OfficialTransformer = denoiser.net
        d = net.pos_emb.shape[-1]
        self.d, self.dtype = d, dtype
        self.n_heads = net.blocks[0].attn.n_heads
        self.pos = net.pos_emb.detach().to(dtype)  # (1, 1 + H, d)
        self.action_in = net.action_in.weight.detach().to(dtype)  # (d, A)
        self.norm_out = _norm(net.norm_out, dtype)
        self.action_out = (net.action_out.weight.detach().to(dtype), net.action_out.bias.detach().to(dtype))
        self.layers = [
            _Layer(
                _norm(b.norm1, dtype),
                b.attn.query.weight.detach().to(dtype),
                b.attn.key.weight.detach().to(dtype),
                b.attn.value.weight.detach().to(dtype),
                _norm(b.attn.q_norm, dtype),
                _norm(b.attn.k_norm, dtype),
                b.attn.proj.weight.detach().to(dtype),
                _norm(b.norm2, dtype),
            )
            for b in net.blocks
        ]
        if dtype == next(net.parameters()).dtype:
            fused = [level.fused for level in plan.levels]
        else:  # each bank cast once, every step's experts views of the cast banks
            per_layer = [layer.fuse(plan.noise_emb, dtype) for layer in net.moe_layers()]
            fused = [list(step) for step in zip(*per_layer)]
        self.steps = []
        for level, experts in zip(plan.levels, fused):
            phi = level.noise_emb.detach()  # (d,) float32
            biases = [
                tuple(
                    (F.linear(phi, lin.weight) + lin.bias).to(dtype) for lin in (b.attn.query, b.attn.key, b.attn.value)
                )
                for b in net.blocks
            ]
            self.steps.append(
                _Step(
                    level.c_in, level.c_skip, level.c_out, biases, self._noise_token_pass(phi, biases, experts), experts
                )
            )
        self._masks: dict[tuple[int, int], Tensor] = {}
        self._param_storages = {p.untyped_storage().data_ptr() for p in net.parameters()}

    def _noise_token_pass(
        self, phi: Tensor, biases: list[tuple[Tensor, Tensor, Tensor]], experts: list[OfficialFusedExperts]
    ) -> list[tuple[Tensor, Tensor]]:
        """The noise token (phi_j, no position) through every layer: its normalised key and value
        per layer. Alone in its causal window, its attention output is its value."""
        d, heads = self.d, self.n_heads
        h = phi.to(self.dtype).view(1, d)  # (1, d)
        kv0 = []
        for layer, (_, bk, bv), fused in zip(self.layers, biases, experts):
            a = rms(h, layer.norm1)
            k = rms(torch.addmm(bk, a, layer.wk.t()).view(1, heads, 1, d // heads), layer.k_norm)
            v = torch.addmm(bv, a, layer.wv.t())  # (1, d)
            kv0.append((k, v.view(1, heads, 1, d // heads)))
            h = rms(torch.addmm(h, v, layer.proj.t()), layer.norm2)
            h = fused.add_to(h, h)
        return kv0

    def owned_bytes(self) -> int:
        """Bytes of the tensors this sampler holds that are not views of the network's parameters
        (per-step biases and noise-token keys/values; cast weights with another ``dtype``)."""
        tensors = [self.pos, self.action_in, *self.action_out, self.norm_out.weight]
        for layer in self.layers:
            tensors += [t.weight if isinstance(t, _Norm) else t for t in layer]
        for step in self.steps:
            tensors += [t for triple in step.qkv_bias for t in triple] + [t for kv in step.kv0 for t in kv]
            tensors += [t for fused in step.experts for e in fused.experts for t in e[:3]]
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
        return sum(n for ptr, n in storages.items() if ptr not in self._param_storages)

    def sample(
        self,
        cond: Tensor,
        x: Tensor,
        sampler: Sampler,
        sigmas: Tensor,
        guide: Callable[[DenoiseFn], DenoiseFn] | None = None,
    ) -> Tensor:
        """Normalised actions (B, H, A) from ``x`` (B, H, A) at sigma_max for condition tokens
        ``cond`` (B, 1 + n_cams, d) = [goal, cameras]; ``guide`` wraps the denoiser (guidance)."""
        prefix = self.prefix_rows(cond)

        def denoise(x: Tensor, j: int) -> Tensor:
            return self.denoise(x, j, prefix)

        return sampler.run(denoise if guide is None else guide(denoise), x, sigmas)

    def prefix_rows(self, cond: Tensor) -> Tensor:
        """The goal (position 0) and camera (position 1) rows of a chunk: (B, 1 + n_cams, d)."""
        cond = cond.to(self.dtype)
        return torch.cat([cond[:, :1] + self.pos[:, :1], cond[:, 1:] + self.pos[:, 1:2]], dim=1)

    def _mask(self, queries: int, keys: int) -> Tensor:
        """(queries, keys) bool: the last ``queries`` rows of a causal window over ``keys`` rows."""
        if (queries, keys) not in self._masks:
            full = torch.ones(keys, keys, dtype=torch.bool).tril()
            self._masks[(queries, keys)] = full[keys - queries :].to(self.pos.device)
        return self._masks[(queries, keys)]

    def denoise(self, x: Tensor, j: int, prefix: Tensor) -> Tensor:
        """D(x, sigma_j) (B, H, A) at evaluation ``j``: ``c_skip x + c_out F(c_in x)``."""
        step = self.steps[j]
        b, horizon, _ = x.shape
        d, heads = self.d, self.n_heads
        hd = d // heads
        actions = F.linear((x * step.c_in).to(self.dtype), self.action_in) + self.pos[:, 1 : 1 + horizon]
        h = torch.cat([prefix, actions], dim=1)  # (B, R, d): goal, cameras, actions
        rows = h.shape[1]
        h = h.view(-1, d)  # (B*R, d)
        last = len(self.layers) - 1
        for i, (layer, (bq, bk, bv), (k0, v0), fused) in enumerate(
            zip(self.layers, step.qkv_bias, step.kv0, step.experts)
        ):
            a = rms(h, layer.norm1)  # (B*R, d)
            n_q = horizon if i == last else rows  # the last layer: only the action rows go on
            a_q = a if i != last else a.view(b, rows, d)[:, -horizon:].reshape(-1, d)
            q = rms(torch.addmm(bq, a_q, layer.wq.t()).view(b, n_q, heads, hd), layer.q_norm).transpose(1, 2)
            k = rms(torch.addmm(bk, a, layer.wk.t()).view(b, rows, heads, hd), layer.k_norm).transpose(1, 2)
            v = torch.addmm(bv, a, layer.wv.t()).view(b, rows, heads, hd).transpose(1, 2)
            k = torch.cat([k0.expand(b, -1, -1, -1), k], dim=2)  # (B, heads, 1 + R, hd): noise token first
            v = torch.cat([v0.expand(b, -1, -1, -1), v], dim=2)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=self._mask(n_q, rows + 1))  # (B, heads, n_q, hd)
            base = h if i != last else h.view(b, rows, d)[:, -horizon:].reshape(-1, d)
            h = rms(torch.addmm(base, y.transpose(1, 2).reshape(-1, d), layer.proj.t()), layer.norm2)
            h = fused.add_to(h, h)  # (B*n_q, d)
        out = F.linear(rms(h, self.norm_out), *self.action_out).view(b, horizon, -1).to(x.dtype)  # F: (B, H, A)
        return x * step.c_skip + out * step.c_out


def build_official_lean_sampler(
    denoiser: EDMDenoiser, plan: SamplingPlan, dtype: torch.dtype = torch.float32
) -> OfficialLeanSampler | None:
    """The official lean sampler for ``plan`` of ``denoiser``; None without the expert cache
    (the module path then samples) or in training mode."""
    if denoiser.training or not plan.cached:
        return None
    with torch.no_grad():
        return OfficialLeanSampler(denoiser, plan, dtype)
