"""The official MoDE denoising transformer (``architecture="official"``).

The network function of the official ``MoDeDiT``, with this library's names and call
interface (that of :class:`mode_policy.model.transformer.MoDETransformer`). Over the sequence
``[phi, goal, camera_1 .. camera_n, action_1 .. action_H]`` every block computes::

    x = x + Attn(RMSNorm(x) + phi)      # causal, q/k/v with biases, QK-norm
    x = RMSNorm(x)                      # the residual stream itself is re-normalised
    x = x + MoE(x)                      # experts chosen from phi, per token

and the head reads ``Linear(RMSNorm(x))`` at the action tokens. ``phi`` is
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
"""

from __future__ import annotations

import math

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

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        heads = (b, t, self.n_heads, d // self.n_heads)
        q = self.q_norm(self.query(x).view(heads).transpose(1, 2))  # (B, heads, T, hd)
        k = self.k_norm(self.key(x).view(heads).transpose(1, 2))
        v = self.value(x).view(heads).transpose(1, 2)
        dropout = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


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
        up, gate = F.linear(x, self.w_in[e], self.b_in[e]).chunk(2, dim=-1)
        return F.linear(self.dropout(up * F.silu(gate)), self.w_out[e])

    def dispatch(self, x: Tensor, index: Tensor, weights: Tensor) -> Tensor:
        """Each row of ``x`` (N, d) through its experts ``index`` (N, k), mixed by ``weights`` (N, k)."""
        y = torch.zeros_like(x)
        for e in range(self.n_experts):
            hit = index == e  # (N, k); a row picks an expert at most once
            rows = hit.any(dim=-1).nonzero().squeeze(-1)
            if rows.numel() == 0:
                continue
            mix = (weights * hit).sum(dim=-1).index_select(0, rows).unsqueeze(-1).to(x.dtype)  # (n, 1)
            y.index_add_(0, rows, mix * self.expert(e, x.index_select(0, rows)))
        return y

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """``nn.Linear``'s default init, expert by expert: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        hidden, dim = self.w_out.shape[2], self.w_in.shape[2]
        for tensor, fan_in in ((self.w_in, dim), (self.b_in, dim), (self.w_out, hidden)):
            nn.init.uniform_(tensor, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))


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

    def forward(self, x: Tensor, noise_emb: Tensor) -> tuple[Tensor, Routing]:
        """x: (B, T, d) normalised stream; noise_emb: (B, d) -> (B, T, d), routing of the B*T tokens."""
        b, t, d = x.shape
        routing = self.route(noise_emb, t)
        rows = x.reshape(-1, d)  # (U, d)
        y = self.experts.dispatch(rows, routing.index, routing.weights)
        if self.shared is not None:
            y = y + self.shared.expert(0, rows)
        return y.view(b, t, d), routing

    def inactive_params(self) -> int:
        """Parameters of the routed experts a token does not use."""
        return (self.experts.n_experts - self.top_k) * self.experts.params_per_expert()


class OfficialBlock(nn.Module):
    def __init__(self, cfg: MoDEConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.norm1 = OfficialRMSNorm(d)
        self.attn = OfficialAttention(d, cfg.n_heads, cfg.attn_dropout)
        self.norm2 = OfficialRMSNorm(d)
        self.mlp = OfficialMoE(d, cfg.num_experts, cfg.top_k, cfg.shared_expert, cfg.resid_dropout)

    def forward(self, x: Tensor, noise_emb: Tensor) -> tuple[Tensor, Routing]:
        x = x + self.attn(self.norm1(x) + noise_emb.unsqueeze(1))
        x = self.norm2(x)
        y, routing = self.mlp(x, noise_emb)
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
        self, noisy_actions: Tensor, noise_emb: Tensor, cond_tokens: Tensor, fused: list | None = None
    ) -> tuple[Tensor, list[Routing]]:
        """noisy_actions: (B, H, A) scaled by c_in; noise_emb: (B, d); cond_tokens: (B, 1 + n_cams, d)
        = [goal, cameras...]. ``fused`` must be None: the official experts have no fused cache.
        Returns F: (B, H, A) and the routing of every layer."""
        if fused is not None:
            raise ValueError("the official network has no expert cache (EDMDenoiser.use_expert_cache=False)")
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
        for block in self.blocks:
            x, routing = block(x, noise_emb)
            routings.append(routing)
        return self.action_out(self.norm_out(x[:, -horizon:])), routings

    def inactive_params(self) -> int:
        return sum(layer.inactive_params() for layer in self.moe_layers())


def mask_goal(goal: Tensor, p: float) -> Tensor:
    """The official goal dropout: each element zeroed with probability ``p``, no rescaling."""
    return goal * (1.0 - torch.bernoulli(torch.full_like(goal, p)))
