"""Transformer building blocks: RMSNorm, SwiGLU MLP, causal self-attention with QK-norm, FiLM."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain (no bias)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def swiglu(x: Tensor, w13: Tensor, w2: Tensor) -> Tensor:
    """SwiGLU MLP with fused input weights.

    x: (..., d); w13: (d, 2h) = [gate | up]; w2: (h, d) -> (..., d).
    """
    gate, up = (x @ w13).chunk(2, dim=-1)
    return (F.silu(gate) * up) @ w2


class SwiGLU(nn.Module):
    """A single SwiGLU MLP ``w2(silu(x w1) * (x w3))`` with hidden width ``hidden``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w13 = nn.Parameter(torch.empty(dim, 2 * hidden))  # (d, 2h)
        self.w2 = nn.Parameter(torch.empty(hidden, dim))  # (h, d)

    def forward(self, x: Tensor) -> Tensor:
        return swiglu(x, self.w13, self.w2)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention (causal by default) with RMS-normalised queries and keys."""

    def __init__(self, dim: int, n_heads: int, attn_dropout: float, resid_dropout: float, causal: bool = True) -> None:
        super().__init__()
        self.causal = causal
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)
        self.attn_dropout = attn_dropout
        self.resid_dropout = nn.Dropout(resid_dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim)
        q, k, v = qkv.unbind(dim=2)  # each (B, T, heads, hd)
        q = self.q_norm(q).transpose(1, 2)  # (B, heads, T, hd)
        k = self.k_norm(k).transpose(1, 2)
        v = v.transpose(1, 2)
        dropout = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=self.causal)
        y = y.transpose(1, 2).reshape(b, t, d)
        return self.resid_dropout(self.proj(y))


class FiLM(nn.Module):
    """Feature-wise modulation from a condition vector: ``sites`` (scale, shift) pairs,
    ``h * (1 + scale) + shift``, computed as ``Linear(SiLU(cond))``. Zero-initialise
    :attr:`proj` to start as the identity."""

    def __init__(self, dim: int, sites: int) -> None:
        super().__init__()
        self.sites = sites
        self.proj = nn.Linear(dim, 2 * sites * dim)

    def forward(self, cond: Tensor) -> list[tuple[Tensor, Tensor]]:
        """cond: (B, d) -> ``sites`` pairs (scale, shift), each (B, 1, d) to broadcast over tokens."""
        params = self.proj(F.silu(cond)).unsqueeze(1)  # (B, 1, 2 * sites * d)
        chunks = params.chunk(2 * self.sites, dim=-1)
        return [(chunks[2 * i], chunks[2 * i + 1]) for i in range(self.sites)]


def modulate(h: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """FiLM of ``h`` (B, T, d) by ``scale``, ``shift`` (B, 1, d)."""
    return h * (1 + scale) + shift
