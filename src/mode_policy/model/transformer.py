"""The MoDE denoising transformer (and its token-routed and dense variants).

Decoder-only, causal, over the token sequence
``[noise, goal, obs_1 .. obs_n, action_1 .. action_H]`` with learned
positional embeddings. Each block is pre-norm:

    x = x + Attn(RMSNorm(x) + phi(sigma))      # noise-conditioned self-attention
    x = x + MoE(RMSNorm(x))                    # experts chosen from phi(sigma) only

where ``phi(sigma)`` is a linear embedding of ``c_noise = ln(sigma)/4``. Its
layer ``sigma_embed`` belongs to this network (phi is its first token and enters
every block); :class:`mode_policy.model.edm.EDMDenoiser` applies it and scales the
network's input and output.

Ablation switches (:class:`~mode_policy.model.config.MoDEConfig`): ``noise_token=False``
drops the noise token; ``noise_conditioning`` is ``"attention"`` (above),
``"film"`` (``h = FiLM_phi(RMSNorm(x))`` before the attention and before the MLP,
nothing added) or ``"none"`` (plain ``Attn(RMSNorm(x))``). The routers see phi in
every variant.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .config import MoDEConfig
from .expert_cache import FusedExperts
from .layers import CausalSelfAttention, FiLM, RMSNorm, SwiGLU, modulate
from .moe import ExpertBank, MoELayer, Routing


class Block(nn.Module):
    def __init__(self, cfg: MoDEConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.norm1 = RMSNorm(d)
        self.attn = CausalSelfAttention(d, cfg.n_heads, cfg.attn_dropout, cfg.resid_dropout, cfg.causal)
        self.norm2 = RMSNorm(d)
        if cfg.routing == "dense":
            self.mlp: nn.Module = SwiGLU(d, cfg.dense_mlp_ratio * d)
        else:
            self.mlp = MoELayer(d, cfg.mlp_ratio * d, cfg.num_experts, cfg.top_k, cfg.routing, cfg.shared_expert)
        self.mlp_dropout = nn.Dropout(cfg.resid_dropout)
        self.noise_attention = cfg.noise_conditioning == "attention"
        self.film = FiLM(d, sites=2) if cfg.noise_conditioning == "film" else None

    def forward(self, x: Tensor, noise_emb: Tensor, fused: FusedExperts | None) -> tuple[Tensor, Routing | None]:
        """x: (B, T, d); noise_emb: (B, d) -> (B, T, d) and the MLP's routing (None if dense or fused)."""
        h = self.norm1(x)
        if self.film is not None:
            (attn_scale, attn_shift), (mlp_scale, mlp_shift) = self.film(noise_emb)  # each (B, 1, d)
            h = modulate(h, attn_scale, attn_shift)
        elif self.noise_attention:
            h = h + noise_emb.unsqueeze(1)
        x = x + self.attn(h)
        h = self.norm2(x)
        if self.film is not None:
            h = modulate(h, mlp_scale, mlp_shift)
        routing = None
        if isinstance(self.mlp, MoELayer):
            y, routing = self.mlp(h, noise_emb, fused)
        else:
            y = self.mlp(h)
        return x + self.mlp_dropout(y), routing


class MoDETransformer(nn.Module):
    """Maps (scaled noisy actions, noise embedding, condition tokens) to the
    raw EDM network output ``F`` for every action token."""

    def __init__(self, cfg: MoDEConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.cfg = cfg
        self.sigma_embed = nn.Linear(1, d)
        self.action_in = nn.Linear(cfg.action_dim, d)
        self.pos_emb = nn.Parameter(torch.zeros(1, cfg.n_tokens, d))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm_out = RMSNorm(d)
        self.action_out = nn.Linear(d, cfg.action_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 style init (the official code never applies one): N(0, std)
        weights, zero biases, unit norm gains, residual-branch outputs scaled
        by 1/sqrt(2L), a zero output head so the network starts at F=0, and
        zero FiLM maps so FiLM blocks start unmodulated."""
        std = self.cfg.init_std
        resid_std = std / math.sqrt(2 * self.cfg.n_layers)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
            elif isinstance(module, (SwiGLU, ExpertBank)):
                nn.init.normal_(module.w13, std=std)
                nn.init.normal_(module.w2, std=resid_std)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, std=resid_std)
            if block.film is not None:
                nn.init.zeros_(block.film.proj.weight)
        nn.init.normal_(self.pos_emb, std=std)
        nn.init.zeros_(self.action_out.weight)
        nn.init.zeros_(self.action_out.bias)

    def moe_layers(self) -> list[MoELayer]:
        return [b.mlp for b in self.blocks if isinstance(b.mlp, MoELayer)]

    def forward(
        self,
        noisy_actions: Tensor,
        noise_emb: Tensor,
        cond_tokens: Tensor,
        fused: list[FusedExperts] | None = None,
    ) -> tuple[Tensor, list[Routing]]:
        """noisy_actions: (B, H, A) already scaled by c_in; noise_emb: (B, d);
        cond_tokens: (B, n_cond, d) = [goal, obs...]; fused: one entry per
        MoE layer for this sampling step, or None to route.
        Returns F: (B, H, A) and the routings of the MoE layers (training stats)."""
        horizon = noisy_actions.shape[1]
        tokens = [cond_tokens, self.action_in(noisy_actions)]
        if self.cfg.noise_token:
            tokens.insert(0, noise_emb.unsqueeze(1))
        x = torch.cat(tokens, dim=1)  # (B, T, d)
        x = x + self.pos_emb[:, : x.shape[1]]
        routings: list[Routing] = []
        for i, block in enumerate(self.blocks):  # every block is MoE, or none is
            x, routing = block(x, noise_emb, fused[i] if fused is not None else None)
            if routing is not None:
                routings.append(routing)
        return self.action_out(self.norm_out(x[:, -horizon:])), routings

    def inactive_params(self) -> int:
        return sum(layer.inactive_params() for layer in self.moe_layers())
