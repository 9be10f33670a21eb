"""The numbers behind the report: expert routing per noise level and run summary figures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..errors import RunDirError
from ..model.moe import choose_experts
from ..policy import MoDEPolicy
from ..training.run_dir import RunDir


@torch.no_grad()
def expert_routing(policy: MoDEPolicy) -> dict[str, Any]:
    """Router decisions at every network evaluation of the configured sampler.

    The noise levels and their embeddings are those of the denoiser's sampling
    plan, and each MoE layer's router is applied with the evaluation rule
    (deterministic top-k, renormalised weights). Returns plain lists::

        {"routing": "noise", "sampler": ..., "schedule": ..., "top_k": k, "num_experts": E,
         "sigmas": [M floats, high noise first],
         "layers": [{"probs": (M, E), "chosen": (M, k), "weights": (M, k)}, ...]}

    ``chosen`` lists expert indices in decreasing probability. For
    ``routing="dense"`` ``layers`` is empty; for ``routing="token"`` it is empty
    too and ``note`` explains why (the choice depends on the tokens).
    """
    cfg = policy.config
    plan = policy.denoiser.sampling_plan()
    out: dict[str, Any] = {
        "routing": cfg.routing,
        "sampler": cfg.sampler,
        "schedule": cfg.schedule,
        "num_inference_steps": cfg.num_inference_steps,
        "top_k": cfg.top_k,
        "num_experts": cfg.num_experts,
        "sigmas": [float(s) for s in plan.eval_sigmas.tolist()],
        "layers": [],
    }
    if cfg.routing == "dense":
        out["note"] = "dense variant: every block has one MLP, there is no routing"
        return out
    if cfg.routing == "token":
        out["note"] = (
            "token routing: each token picks its own experts, so the choice depends on the "
            "observations and actions, not on the noise level alone"
        )
        return out
    for layer in policy.denoiser.net.moe_layers():
        probs = layer.router(plan.noise_emb)  # (M, E), float32 softmax
        index, weights = choose_experts(probs, layer.top_k, sample=False)  # eval rule: top-k
        out["layers"].append(
            {
                "probs": probs.cpu().tolist(),
                "chosen": index.cpu().tolist(),
                "weights": weights.float().cpu().tolist(),
            }
        )
    return out


def routing_changes(routing: Mapping[str, Any]) -> tuple[int, int]:
    """(distinct expert sets over all layers and evaluations, expert changes between
    consecutive evaluations summed over layers) of an :func:`expert_routing` result."""
    layers = routing["layers"]
    sets = {tuple(sorted(c)) for layer in layers for c in layer["chosen"]}
    switches = sum(
        sum(sorted(a) != sorted(b) for a, b in zip(layer["chosen"], layer["chosen"][1:])) for layer in layers
    )
    return len(sets), switches


def median_throughput(records: Sequence[Mapping[str, Any]]) -> tuple[float, int] | None:
    """Median ``samples_per_s`` of the logged windows and how many there are (None if none)."""
    values = sorted(float(r["samples_per_s"]) for r in records if "samples_per_s" in r)
    if not values:
        return None
    mid = len(values) // 2
    median = values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])
    return median, len(values)


def load_run_policy(run: RunDir) -> MoDEPolicy:
    """The final EMA policy of a run directory, with an error naming what is missing."""
    if not run.root.is_dir():
        raise RunDirError(f"run directory not found: {run.root}")
    if not run.model.is_dir():
        raise RunDirError(
            f"model directory not found: {run.model} (training writes the final EMA policy there when it finishes)"
        )
    return MoDEPolicy.from_pretrained(run.model)  # CheckpointError names a missing or corrupt file
