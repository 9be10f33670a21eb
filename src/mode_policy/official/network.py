"""The official MoDE denoising transformer (``architecture="official"``).

The network function of the official ``MoDeDiT``, with this library's names and call
interface (that of :class:`mode_policy.model.transformer.MoDETransformer`). Over the sequence
``[phi, goal, camera_1 .. camera_n, action_1 .. action_H]`` every block computes::

    x = x + Attn(RMSNorm(x) + phi)      # causal, q/k/v with biases, QK-norm
    x = RMSNorm(x)                      # the residual stream itself is re-normalised
    x = x + MoE(x)                      # experts chosen from phi, per token

and the head reads ``Linear(RMSNorm(x))`` at the action tokens. The last block computes
only those rows (its queries, attention output and experts; every token is still routed, so the
training draws and the balancing term are the official ones). ``phi`` is
``Linear(d, d, no bias)(Linear(1, d)(c_noise))``. Positions: none for ``phi``, 0 for the
goal, 1 for every camera token, 1..H for the actions (the first action shares the
cameras' position). The goal and camera tokens arrive embedded (the policy's
``goal_proj`` and the image encoder's shared projection, both without bias).

MoE: the router ``Linear(d, 2d), GELU, Linear(2d, E)`` gives a clamped softmax over the
routed experts; each token draws its k experts without replacement in training and takes
the top-k in evaluation; the chosen probabilities are renormalised. With
``shared_expert`` the router picks top-(k-1) of E-1 experts and one more expert always
runs at weight 1. Experts are SwishGLU MLPs ``W_out(drop(up * silu(gate)))`` with a
biased up-projection; ``resid_dropout`` is their inner dropout.

Expert cache: the router sees only phi, so in evaluation every token of every sample at one
noise level runs the same experts. :meth:`OfficialMoE.fuse` gives, per planned noise level,
an :class:`OfficialFusedExperts`: the chosen experts (views of the banks) with their mixing
weights as host floats, the shared expert last at weight 1; it runs without router or dispatch.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model.config import MoDEConfig
from ..model.moe import Routing
from .spec import OFFICIAL_MLP_RATIO, vision_feature_dim

ROUTER_PROB_CLAMP = 1e-9
"""The official router clamps its softmax to [1e-9, 1 - 1e-9]."""


class OfficialRMSNorm(nn.Module):
    """``x / max(||x|| / sqrt(d), eps) * g``, the official RMS norm (eps outside the root)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        rms = torch.linalg.vector_norm(x, dim=-1, keepdim=True) * x.shape[-1] ** -0.5
        return x / rms.clamp(min=self.eps) * self.weight


class OfficialAttention(nn.Module):
    """Causal multi-head self-attention: biased q/k/v, RMS-normalised q and k per head,
    dropout on the attention probabilities, an unbiased output projection, no output dropout."""

    def __init__(self, dim: int, n_heads: int, attn_dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.q_norm = OfficialRMSNorm(dim // n_heads)
        self.k_norm = OfficialRMSNorm(dim // n_heads)
        self.attn_dropout = attn_dropout

    def forward(self, x: Tensor, queries: int | None = None) -> Tensor:
        """x: (B, T, d) -> (B, T, d); with ``queries``, only the last ``queries`` rows attend
        (each to itself and the rows before it) -> (B, queries, d)."""
        b, t, d = x.shape
        hd = d // self.n_heads
        q_rows = x if queries is None else x[:, t - queries :]
        q = self.q_norm(self.query(q_rows).view(b, -1, self.n_heads, hd).transpose(1, 2))  # (B, heads, T_q, hd)
        k = self.k_norm(self.key(x).view(b, t, self.n_heads, hd).transpose(1, 2))  # (B, heads, T, hd)
        v = self.value(x).view(b, t, self.n_heads, hd).transpose(1, 2)
        dropout = self.attn_dropout if self.training else 0.0
        if queries is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()[t - queries :]  # (T_q, T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.proj(y.transpose(1, 2).reshape(b, -1, d))


class OfficialRouter(nn.Module):
    """``Linear(d, 2d), GELU, Linear(2d, E)`` -> clamped softmax (..., E) in float32."""

    def __init__(self, dim: int, n_experts: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, n_experts))

    def forward(self, h: Tensor) -> Tensor:
        logits = self.net(h).float()
        logits = logits - logits.max(dim=-1, keepdim=True).values
        return logits.softmax(dim=-1).clamp(ROUTER_PROB_CLAMP, 1 - ROUTER_PROB_CLAMP)


class OfficialExperts(nn.Module):
    """E SwishGLU experts stored stacked, weights in ``nn.Linear`` orientation:
    ``w_in[e]`` (2h, d) with rows ``[up | gate]`` and bias ``b_in[e]`` (2h,), ``w_out[e]`` (d, h)."""

    def __init__(self, dim: int, hidden: int, n_experts: int, dropout: float) -> None:
        super().__init__()
        self.w_in = nn.Parameter(torch.empty(n_experts, 2 * hidden, dim))
        self.b_in = nn.Parameter(torch.empty(n_experts, 2 * hidden))
        self.w_out = nn.Parameter(torch.empty(n_experts, dim, hidden))
        self.dropout = nn.Dropout(dropout)

    @property
    def n_experts(self) -> int:
        return self.w_in.shape[0]

    def params_per_expert(self) -> int:
        return self.w_in[0].numel() + self.b_in[0].numel() + self.w_out[0].numel()

    def expert(self, e: int, x: Tensor) -> Tensor:
        """Expert ``e`` on rows ``x`` (N, d) -> (N, d)."""
        return self._swishglu(x, self.w_in[e], self.b_in[e], self.w_out[e])

    def _swishglu(self, x: Tensor, w_in: Tensor, b_in: Tensor, w_out: Tensor) -> Tensor:
        up, gate = F.linear(x, w_in, b_in).chunk(2, dim=-1)
        return F.linear(self.dropout(up * F.silu(gate)), w_out)

    def dispatch(self, x: Tensor, index: Tensor, weights: Tensor) -> Tensor:
        """Each row of ``x`` (N, d) through its experts ``index`` (N, k), mixed by ``weights`` (N, k)."""
        y = torch.zeros_like(x)
        # unbind, not w_in[e]: its backward stacks the experts' gradients into one bank-sized
        # tensor, where indexing would zero-fill a bank-sized gradient per expert
        banks = list(zip(self.w_in.unbind(0), self.b_in.unbind(0), self.w_out.unbind(0)))
        for e, bank in enumerate(banks):
            hit = index == e  # (N, k); a row picks an expert at most once
            rows = hit.any(dim=-1).nonzero().squeeze(-1)
            if rows.numel() == 0:
                continue
            mix = (weights * hit).sum(dim=-1).index_select(0, rows).unsqueeze(-1).to(x.dtype)  # (n, 1)
            y.index_add_(0, rows, mix * self._swishglu(x.index_select(0, rows), *bank))
        return y

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """``nn.Linear``'s default init, expert by expert: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        hidden, dim = self.w_out.shape[2], self.w_in.shape[2]
        for tensor, fan_in in ((self.w_in, dim), (self.b_in, dim), (self.w_out, hidden)):
            nn.init.uniform_(tensor, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))


class FusedExpert(NamedTuple):
    """One expert of a fused step: views of its bank's weights, and its mixing weight."""

    w_in: Tensor  # (2h, d): rows [up | gate]
    b_in: Tensor  # (2h,)
    w_out: Tensor  # (d, h)
    weight: float  # renormalised router weight; 1.0 for the shared expert


class OfficialFusedExperts(NamedTuple):
    """The experts one official MoE layer runs at one planned noise level (routed ones in
    ascending order, then the shared expert): ``sum_e weight_e * expert_e(x)`` without a router.

    Each expert is one ``addmm`` with its bias, a SwishGLU, and one ``addmm`` that
    scales by the mixing weight and accumulates into the output (``alpha``/``beta`` of the
    matmul): no weight copies, no dispatch, no mixing pass."""

    experts: tuple[FusedExpert, ...]

    def add_to(self, base: Tensor, x: Tensor) -> Tensor:
        """``base + sum_e weight_e * expert_e(x)`` for rows ``x``, ``base`` (N, d) -> new (N, d)."""
        out = base
        for e in self.experts:
            hidden = torch.addmm(e.b_in, x, e.w_in.t())  # (N, 2h): [up | gate]
            h = hidden.shape[-1] // 2
            act = F.silu(hidden[:, h:]).mul_(hidden[:, :h])  # (N, h), contiguous: the next matmul is faster
            if out is base:
                out = torch.addmm(base, act, e.w_out.t(), alpha=e.weight)
            else:
                out.addmm_(act, e.w_out.t(), alpha=e.weight)
        return out


class OfficialMoE(nn.Module):
    """The official mixture: per-token expert choice from the noise embedding."""

    def __init__(self, dim: int, n_experts: int, top_k: int, shared_expert: bool, dropout: float) -> None:
        super().__init__()
        hidden = OFFICIAL_MLP_RATIO * dim
        routed = n_experts - 1 if shared_expert else n_experts
        self.top_k = top_k - 1 if shared_expert else top_k  # routed experts per token
        self.router = OfficialRouter(dim, routed)
        self.experts = OfficialExperts(dim, hidden, routed, dropout)
        self.shared = OfficialExperts(dim, hidden, 1, dropout) if shared_expert else None

    def route(self, noise_emb: Tensor, tokens: int) -> Routing:
        """Routing of every token: probs (U, E) repeated over the ``tokens`` of each sample,
        k experts drawn per token in training (top-k in evaluation), renormalised weights.

        ``Routing.probs`` is ``k`` times the dense renormalised weights (zeros where not
        chosen): :func:`mode_policy.model.moe.balancing_loss` of it is the official balancing
        term ``E * sum_i mean(weight_i) * (fraction of tokens routed to i)``.
        """
        probs = self.router(noise_emb)  # (B, E)
        probs = probs.unsqueeze(1).expand(-1, tokens, -1).reshape(-1, probs.shape[-1])  # (U, E)
        if self.training:
            index = torch.multinomial(probs, self.top_k, replacement=False)  # (U, k)
        else:
            index = probs.topk(self.top_k, dim=-1).indices
        chosen = probs.gather(-1, index)
        weights = chosen / chosen.sum(dim=-1, keepdim=True)  # (U, k)
        dense = torch.zeros_like(probs).scatter(-1, index, weights)  # (U, E)
        return Routing(self.top_k * dense, index, weights)

    @torch.no_grad()
    def fuse(self, noise_emb: Tensor, dtype: torch.dtype | None = None) -> list[OfficialFusedExperts]:
        """The fused experts at each of M planned noise levels ``noise_emb`` (M, d): the
        evaluation-mode choice of :meth:`route` (top-k of the router, renormalised), each a
        view of the bank, then the shared expert at weight 1. One host sync, at build time.
        With ``dtype``, each bank is cast once and every step's experts are views of the cast
        banks (steps that route the same experts share their weights)."""
        probs = self.router(noise_emb)  # (M, E)
        index = probs.topk(self.top_k, dim=-1).indices  # (M, k)
        chosen = probs.gather(-1, index)
        weights = chosen / chosen.sum(dim=-1, keepdim=True)  # (M, k)
        routed = _bank_tensors(self.experts, dtype)
        shared = [] if self.shared is None else [_fused_expert(_bank_tensors(self.shared, dtype), 0, 1.0)]
        return [
            OfficialFusedExperts(tuple(_fused_expert(routed, e, w) for e, w in sorted(zip(ids, ws))) + (*shared,))
            for ids, ws in zip(index.tolist(), weights.tolist())
        ]

    def forward(self, x: Tensor, noise_emb: Tensor, tokens: int | None = None) -> tuple[Tensor, Routing]:
        """x: (B, T, d) normalised stream; noise_emb: (B, d) -> (B, T, d), routing of the B*T tokens.
        With ``tokens`` > T, ``x`` holds the last T of ``tokens`` rows per sample: all of them are
        routed (the same draws and balancing term as without the cut), only ``x`` runs."""
        b, t, d = x.shape
        routing = self.route(noise_emb, tokens or t)
        index, weights = routing.index, routing.weights
        if tokens is not None and tokens != t:
            k = index.shape[-1]
            index = index.view(b, tokens, k)[:, tokens - t :].reshape(-1, k)  # (B*T, k)
            weights = weights.view(b, tokens, k)[:, tokens - t :].reshape(-1, k)
        rows = x.reshape(-1, d)  # (B*T, d)
        y = self.experts.dispatch(rows, index, weights)
        if self.shared is not None:
            y = y + self.shared.expert(0, rows)
        return y.view(b, t, d), routing

    def inactive_params(self) -> int:
        """Parameters of the routed experts a token does not use."""
        return (self.experts.n_experts - self.top_k) * self.experts.params_per_expert()


def _bank_tensors(bank: OfficialExperts, dtype: torch.dtype | None) -> tuple[Tensor, Tensor, Tensor]:
    """The bank's (w_in, b_in, w_out), detached; cast to ``dtype`` (a copy) where it differs."""
    return tuple(t.detach().to(dtype or t.dtype) for t in (bank.w_in, bank.b_in, bank.w_out))


def _fused_expert(bank: tuple[Tensor, Tensor, Tensor], e: int, weight: float) -> FusedExpert:
    return FusedExpert(bank[0][e], bank[1][e], bank[2][e], weight)


class OfficialBlock(nn.Module):
    def __init__(self, cfg: MoDEConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.norm1 = OfficialRMSNorm(d)
        self.attn = OfficialAttention(d, cfg.n_heads, cfg.attn_dropout)
        self.norm2 = OfficialRMSNorm(d)
        self.mlp = OfficialMoE(d, cfg.num_experts, cfg.top_k, cfg.shared_expert, cfg.resid_dropout)

    def forward(
        self, x: Tensor, noise_emb: Tensor, fused: OfficialFusedExperts | None = None, keep: int | None = None
    ) -> tuple[Tensor, Routing | None]:
        """x: (B, T, d); noise_emb: (B, d) -> (B, T, d) and the routing (None with ``fused``:
        this step's cached experts run, no router). ``keep``: compute only the last ``keep`` rows'
        outputs (B, keep, d) (the rows the next computation reads; every token is still routed)."""
        t = x.shape[1]
        h = self.norm1(x) + noise_emb.unsqueeze(1)
        if keep is None:
            x = x + self.attn(h)
        else:
            x = x[:, t - keep :] + self.attn(h, queries=keep)
        x = self.norm2(x)
        if fused is not None:
            rows = x.reshape(-1, x.shape[-1])  # (B*T, d)
            return fused.add_to(rows, rows).view_as(x), None
        y, routing = self.mlp(x, noise_emb, tokens=t)
        return x + y, routing


class NoiseEmbedding(nn.Module):
    """phi(c_noise) = ``linear2(linear1(c_noise))``: Linear(1, d), then Linear(d, d, no bias)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(1, dim)
        self.linear2 = nn.Linear(dim, dim, bias=False)

    @property
    def weight(self) -> Tensor:
        """The first layer's weight: the device and dtype :class:`~mode_policy.model.edm.EDMDenoiser` reads."""
        return self.linear1.weight

    def forward(self, c_noise: Tensor) -> Tensor:
        return self.linear2(self.linear1(c_noise))  # (..., 1) -> (..., d)


class OfficialTransformer(nn.Module):
    """The official ``MoDeDiT`` function: (scaled noisy actions, phi, [goal, cameras] tokens) -> F."""

    def __init__(self, cfg: MoDEConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.cfg = cfg
        self.sigma_embed = NoiseEmbedding(d)
        self.action_in = nn.Linear(cfg.action_dim, d, bias=False)
        self.pos_emb = nn.Parameter(torch.zeros(1, 1 + cfg.horizon, d))
        self.blocks = nn.ModuleList(OfficialBlock(cfg) for _ in range(cfg.n_layers))
        self.norm_out = OfficialRMSNorm(d)
        self.action_out = nn.Linear(d, cfg.action_dim)
        # The official network declares this projection but never uses it (its proprioception
        # path is dead code); it stays, frozen, so that parameter counts and checkpoints match.
        obs_dim = vision_feature_dim(cfg.vision_depth, cfg.vision_width)
        self.gripper_embed = nn.Parameter(torch.empty(d, obs_dim), requires_grad=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official initialisation: PyTorch's defaults everywhere (the official code defines
        other schemes but never applies them), zero positions, N(0, 0.02) routers with zero biases."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, OfficialExperts)):
                module.reset_parameters()
            elif isinstance(module, OfficialRMSNorm):
                nn.init.ones_(module.weight)
        for layer in self.moe_layers():
            for linear in (layer.router.net[0], layer.router.net[2]):
                nn.init.normal_(linear.weight, std=0.02)
                nn.init.zeros_(linear.bias)
        nn.init.zeros_(self.pos_emb)
        nn.init.kaiming_uniform_(self.gripper_embed, a=math.sqrt(5))

    def moe_layers(self) -> list[OfficialMoE]:
        return [block.mlp for block in self.blocks]

    def forward(
        self,
        noisy_actions: Tensor,
        noise_emb: Tensor,
        cond_tokens: Tensor,
        fused: list[OfficialFusedExperts] | None = None,
    ) -> tuple[Tensor, list[Routing]]:
        """noisy_actions: (B, H, A) scaled by c_in; noise_emb: (B, d); cond_tokens: (B, 1 + n_cams, d)
        = [goal, cameras...]; ``fused``: this step's cached experts per layer (:meth:`OfficialMoE.fuse`),
        or None to route. Returns F: (B, H, A) and the routing of every layer (none when fused)."""
        horizon = noisy_actions.shape[1]
        pos = self.pos_emb
        x = torch.cat(
            [
                noise_emb.unsqueeze(1),  # no position
                cond_tokens[:, :1] + pos[:, :1],  # goal: position 0
                cond_tokens[:, 1:] + pos[:, 1:2],  # every camera token: position 1
                self.action_in(noisy_actions) + pos[:, 1 : 1 + horizon],  # actions: positions 1..H
            ],
            dim=1,
        )  # (B, T, d)
        routings = []
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):  # the last block computes the action rows only
            x, routing = block(x, noise_emb, None if fused is None else fused[i], keep=horizon if i == last else None)
            if routing is not None:
                routings.append(routing)
        return self.action_out(self.norm_out(x)), routings

    def inactive_params(self) -> int:
        return sum(layer.inactive_params() for layer in self.moe_layers())


def mask_goal(goal: Tensor, p: float) -> Tensor:
    """The official goal dropout: each element zeroed with probability ``p``, no rescaling."""
    return goal * (1.0 - torch.bernoulli(torch.full_like(goal, p)))
