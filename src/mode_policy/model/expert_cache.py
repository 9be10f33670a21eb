"""Expert caching: fuse the experts each sampling step uses, before sampling.

Because MoDE's router sees only the noise level, the experts (and mixing
weights) of every layer at every step of a fixed schedule are known before
inference. This module computes them once and hands each layer a
:class:`FusedExperts` per step, indexed by step number (no float keys).

Memory: when a step's chosen experts form an arithmetic progression of
indices (always true for k <= 2), the fused weights are strided *views* of the
expert bank, so the cache owns no weight copies at all. Other combinations
(k >= 3) are copied once per distinct combination and shared between steps.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .moe import FusedExperts, MoELayer, choose_experts


def _select(bank: Tensor, experts: list[int], copies: dict, key: tuple) -> Tensor:
    """Experts ``experts`` (ascending) of ``bank`` (E, ...) as (k, ...), a view if possible."""
    if len(experts) == 1:
        return bank[experts[0] : experts[0] + 1]
    stride = experts[1] - experts[0]
    if all(b - a == stride for a, b in zip(experts, experts[1:])):
        return bank[experts[0] : experts[-1] + 1 : stride]
    if key not in copies:
        copies[key] = bank[experts].contiguous()
    return copies[key]


@torch.no_grad()
def build_layer_cache(layer: MoELayer, noise_emb: Tensor) -> tuple[list[FusedExperts], int]:
    """Fused experts of one layer for each of the M noise embeddings (M, d).

    Returns the per-step list and the bytes the cache owns: weight copies
    (none for k <= 2) and the (M, k) mixing weights.
    """
    probs = layer.router(noise_emb)  # (M, E)
    index, weights = choose_experts(probs, layer.top_k, sample=False)  # (M, k)
    order = index.argsort(dim=-1)
    index = index.gather(-1, order)
    weights = weights.gather(-1, order).to(layer.experts.w13.dtype)
    copies: dict[tuple, Tensor] = {}
    steps = []
    for m, experts in enumerate(index.tolist()):  # one host sync, at build time only
        w13 = _select(layer.experts.w13.detach(), experts, copies, ("w13", *experts))
        w2 = _select(layer.experts.w2.detach(), experts, copies, ("w2", *experts))
        steps.append(FusedExperts(w13, w2, weights[m : m + 1]))  # mix: (1, k) view
    owned = sum(t.numel() * t.element_size() for t in (*copies.values(), weights))
    return steps, owned


def weights_version(modules) -> tuple:
    """A cheap fingerprint that changes when any parameter of ``modules`` is
    replaced or modified in place (optimizer steps, ``load_state_dict``)."""
    return tuple((p.data_ptr(), p._version) for m in modules for p in m.parameters())
