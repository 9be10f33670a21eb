"""Expert caching: fuse the experts each sampling step uses, before sampling.

Because MoDE's router sees only the noise level, the experts (and mixing
weights) of every layer at every step of a fixed schedule are known before
inference. This module computes them once and hands each layer a
:class:`FusedExperts` per step, indexed by step number (no float keys).

Memory: when a step's chosen experts form an arithmetic progression of
indices (always true for k <= 2), the fused weights are strided *views* of the
expert bank, so the cache owns no weight copies at all. Other combinations
(k >= 3) are copied once per distinct combination and shared between steps.

The official architecture (:mod:`mode_policy.official.network`: biased experts, an always-on
shared expert) fuses its own way (:meth:`~mode_policy.official.network.OfficialMoE.fuse`):
every expert of a step is a view of its bank, so its cache owns no tensor at all.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import MoDEConfig
from .moe import FusedExperts, MoELayer, choose_experts


def expert_cache_unavailable(cfg: MoDEConfig) -> str | None:
    """Why ``cfg``'s experts cannot be cached (None: noise routing, both architectures, or the
    dense variant, which has no experts and so nothing the cache would skip)."""
    if cfg.routing == "token":
        return "routing='token' chooses experts from the tokens, which no cache can know before sampling"
    return None


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
def build_layer_cache(layer: MoELayer, noise_emb: Tensor) -> tuple[list, int]:
    """Fused experts of one layer for each of the M noise embeddings (M, d).

    Returns the per-step list and the bytes the cache owns: weight copies
    (none for k <= 2) and the (M, k) mixing weights. An official MoE layer
    (any layer with ``fuse``) builds its own :class:`OfficialFusedExperts`.
    """
    if not isinstance(layer, MoELayer):
        steps = layer.fuse(noise_emb)
        return steps, owned_bytes([t for step in steps for e in step.experts for t in e[:3]], layer)
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


def owned_bytes(tensors: list[Tensor], module: torch.nn.Module) -> int:
    """Bytes of the distinct storages among ``tensors`` that no parameter of ``module`` owns."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(n for ptr, n in storages.items() if ptr not in params)


def weights_version(modules) -> tuple:
    """A cheap fingerprint that changes when any parameter of ``modules`` is
    replaced or modified in place (optimizer steps, ``load_state_dict``)."""
    return tuple((p.data_ptr(), p._version) for m in modules for p in m.parameters())
