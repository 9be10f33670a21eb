"""Mixture-of-experts MLP: router, expert bank, batched dispatch, balancing loss.

Two routings share one dispatch: with ``routing="noise"`` (MoDE) the router
sees only the noise embedding, so a whole sample (all its tokens) goes to the
same k experts; with ``routing="token"`` every token is routed on its own.
Either way the *units* routed (samples or tokens) are grouped by expert and
each expert runs once on its group.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .layers import SwiGLU, swiglu


class Routing(NamedTuple):
    """A routing decision for U units (samples or tokens)."""

    probs: Tensor  # (U, E) full softmax of the router
    index: Tensor  # (U, k) chosen experts
    weights: Tensor  # (U, k) renormalised mixing weights (sum to 1)


def choose_experts(probs: Tensor, k: int, sample: bool) -> tuple[Tensor, Tensor]:
    """Pick k experts per row of ``probs`` (U, E) and their renormalised weights.

    ``sample=True`` draws k experts without replacement from the probabilities
    (training); otherwise takes the deterministic top-k (evaluation).
    """
    if sample:
        index = torch.multinomial(probs.detach(), k, replacement=False)  # (U, k)
    else:
        index = probs.topk(k, dim=-1).indices  # (U, k)
    chosen = probs.gather(-1, index)  # (U, k), differentiable w.r.t. the router
    return index, chosen / chosen.sum(-1, keepdim=True)


def balancing_loss(probs: Tensor, index: Tensor) -> Tensor:
    """Switch-style load-balancing loss ``E * sum_i f_i * P_i``.

    ``f_i``: fraction of the U*k assignments given to expert i (no gradient);
    ``P_i``: mean full-softmax probability of expert i. Equals 1 for uniform routing.
    """
    n_experts = probs.shape[-1]
    f = torch.bincount(index.reshape(-1), minlength=n_experts).to(probs.dtype) / index.numel()
    p = probs.mean(0)
    return n_experts * (f * p).sum()


class Router(nn.Module):
    """Two-layer MLP ``d -> 2d -> E`` giving expert probabilities."""

    def __init__(self, dim: int, n_experts: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, n_experts))

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h).float().softmax(dim=-1)  # (..., E)


class ExpertBank(nn.Module):
    """E SwiGLU experts stored as stacked tensors (expert e: ``w13[e]``, ``w2[e]``)."""

    def __init__(self, dim: int, hidden: int, n_experts: int) -> None:
        super().__init__()
        self.w13 = nn.Parameter(torch.empty(n_experts, dim, 2 * hidden))  # (E, d, 2h)
        self.w2 = nn.Parameter(torch.empty(n_experts, hidden, dim))  # (E, h, d)

    @property
    def n_experts(self) -> int:
        return self.w13.shape[0]

    def params_per_expert(self) -> int:
        return self.w13[0].numel() + self.w2[0].numel()

    def dispatch(self, x: Tensor, index: Tensor, weights: Tensor) -> Tensor:
        """Run each unit of ``x`` through its chosen experts, grouped by expert.

        x: (U, ..., d); index, weights: (U, k) -> (U, ..., d).
        One host sync per call (the group sizes); no loop over units.
        """
        k = index.shape[1]
        flat = index.reshape(-1)  # (U*k,)
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=self.n_experts).tolist()
        unit_ids = order // k  # (U*k,) unit of each assignment, grouped by expert
        grouped = x.index_select(0, unit_ids)  # (U*k, ..., d)
        # unbind, not w13[e]: its backward stacks the experts' gradients into one bank-sized
        # tensor, where indexing would zero-fill a bank-sized gradient per expert
        w13, w2 = self.w13.unbind(0), self.w2.unbind(0)
        outs = [swiglu(chunk, w13[e], w2[e]) for e, chunk in enumerate(grouped.split(counts)) if counts[e] > 0]
        mix = weights.reshape(-1).index_select(0, order).to(x.dtype)
        y = torch.cat(outs) * mix.view(-1, *([1] * (x.dim() - 1)))
        return torch.zeros_like(x).index_add_(0, unit_ids, y)


class FusedExperts(NamedTuple):
    """The k experts one layer uses at one sampling step, ready to run fused.

    ``w13``: (k, d, 2h) and ``w2``: (k, h, d), views of the expert bank where
    possible; ``mix``: (1, k) mixing weights, applied in the final reduction.
    """

    w13: Tensor
    w2: Tensor
    mix: Tensor

    def __call__(self, x: Tensor) -> Tensor:
        shape = x.shape
        k = self.w13.shape[0]
        tokens = x.reshape(-1, shape[-1])  # (N, d)
        h = torch.bmm(tokens.expand(k, -1, -1), self.w13)  # (k, N, 2h): every chosen expert's first layer
        gate, up = h.chunk(2, dim=-1)
        y = torch.bmm(F.silu(gate).mul_(up), self.w2)  # (k, N, d)
        return torch.mm(self.mix, y.view(k, -1)).view(shape)  # sum_j mix_j * y_j


class MoELayer(nn.Module):
    """Sparse mixture of SwiGLU experts routed by noise level or by token."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        n_experts: int,
        top_k: int,
        routing: str,
        shared_expert: bool = False,
    ) -> None:
        super().__init__()
        if routing not in ("noise", "token"):
            raise ConfigError(f"MoELayer routing must be 'noise' or 'token', got {routing!r}")
        self.routing = routing
        self.top_k = top_k
        self.router = Router(dim, n_experts)
        self.experts = ExpertBank(dim, hidden, n_experts)
        self.shared = SwiGLU(dim, hidden) if shared_expert else None

    def route(self, router_input: Tensor) -> Routing:
        probs = self.router(router_input)  # (U, E)
        index, weights = choose_experts(probs, self.top_k, sample=self.training)
        return Routing(probs, index, weights)

    def forward(self, x: Tensor, noise_emb: Tensor, fused: FusedExperts | None = None) -> tuple[Tensor, Routing | None]:
        """x: (B, T, d); noise_emb: (B, d) -> ((B, T, d), routing). With ``fused`` (cached
        sampling) this step's experts run fused, without the router, and routing is None."""
        if fused is not None:
            y, routing = fused(x), None
        elif self.routing == "noise":
            routing = self.route(noise_emb)  # units are samples
            y = self.experts.dispatch(x, routing.index, routing.weights)
        else:
            routing = self.route(x.reshape(-1, x.shape[-1]))  # units are tokens
            y = self.experts.dispatch(x.reshape(-1, x.shape[-1]), routing.index, routing.weights)
            y = y.view_as(x)
        if self.shared is not None:
            y = y + self.shared(x)
        return y, routing

    def inactive_params(self) -> int:
        """Parameters of the experts a forward pass does not use."""
        return (self.experts.n_experts - self.top_k) * self.experts.params_per_expert()
