"""Inference benchmarks (``mode-policy bench latency``).

Every figure is measured side by side in one process: the variants, and two probes of
this machine (a 1024^3 matrix multiply, a large memory copy), run in interleaved rounds
(shuffled order per round), so machine noise hits them all alike, and the ratios are
what to read. With one torch thread the clock is this thread's CPU time, which a busy
neighbour does not inflate by descheduling us; otherwise wall time. Variants, all at the
preset's width and depth, with the same random weights where they share a structure:

* ``mode_cached``          MoDE with the expert cache on the lean sampler (the eval path,
  :mod:`mode_policy.model.lean_sampler`)
* ``mode_cached_modules``  the same, module by module (``use_lean_sampler = False``; bitwise equal)
* ``mode_uncached``        the same weights, routing + batched dispatch every step
* ``dense_active``         dense transformer with the same *active* parameters (MLP hidden = k * 4d), lean
* ``dense_active_modules`` the same, module by module
* ``dense_total``          dense transformer with the same *total* parameters (MLP hidden = E * 4d), lean
* ``mode_e{E}_cached``     MoDE with E experts (top-k fixed) for the scaling curve
* ``dense_footprint``      ``dense_active`` reading as many distinct MLP weights over a chunk as ``mode_cached``
  does (:mod:`mode_policy.bench.footprint_control`; batch 1): the same operations and bytes per step as ``dense_active``,
  so its time over ``dense_active``'s is what that weight footprint alone costs on this machine
* ``onnx_cached``          ``mode_cached`` exported to ONNX (:mod:`mode_policy.serving.export`: the folded graph of
  :mod:`mode_policy.model.folded_sampler`), run by ONNX Runtime with the same thread count (batch 1; with
  ``onnx=True`` and onnxruntime installed)
* ``onnx_dense_active``    ``dense_active`` exported and run the same way
* ``mode_cached_bf16``     ``mode_cached`` with ``precision="bf16"`` (with ``precision="bf16"``): bfloat16
  weights and activations on the lean sampler, float32 sampler state; its action error against
  ``mode_cached`` is reported beside its time

Bounds of a chunk: FLOPs / matmul throughput, and weight bytes / memory bandwidth, each
throughput from its probe's median in the same rounds.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..constants import GOAL_KEY, STATE_KEY
from ..errors import ConfigError
from ..model.config import MoDEConfig, get_preset
from ..model.edm import PRECISIONS
from ..policy import MoDEPolicy
from ..serving.export import OrtChunk, export_sampler, onnx_runtime_available
from .footprint_control import footprint_control
from .timing import COPY_MB, MATMUL_N, bench_clock, machine_probes, paired_ratio, probe_throughputs, time_side_by_side

EXPORTED = {"onnx_cached": "mode_cached", "onnx_dense_active": "dense_active"}
"""The ONNX variants and the eager variant each is exported from."""


# ------------------------------------------------------------------ variants
def _policy(cfg: MoDEConfig, seed: int, cached: bool = True, lean: bool = True) -> MoDEPolicy:
    torch.manual_seed(seed)
    policy = MoDEPolicy(cfg)
    with torch.no_grad():  # a trained-looking output head (init is zero)
        torch.nn.init.normal_(policy.denoiser.net.action_out.weight, std=0.02)
    if cfg.routing == "noise":  # the dense variants have no experts to cache
        policy.denoiser.use_expert_cache = cached
    policy.denoiser.use_lean_sampler = lean
    return policy.eval()


def build_variants(
    base: MoDEConfig, expert_counts: tuple[int, ...] = (8, 16), precision: str = "fp32"
) -> dict[str, MoDEPolicy]:
    """The benchmarked policies (see module docstring)."""
    dense_active = dataclasses.replace(base, routing="dense", dense_mlp_ratio=base.top_k * base.mlp_ratio)
    variants = {
        "mode_cached": _policy(base, 0),
        "mode_cached_modules": _policy(base, 0, lean=False),
        "mode_uncached": _policy(base, 0, cached=False),
        "dense_active": _policy(dense_active, 0),
        "dense_active_modules": _policy(dense_active, 0, lean=False),
        "dense_total": _policy(
            dataclasses.replace(base, routing="dense", dense_mlp_ratio=base.num_experts * base.mlp_ratio), 0
        ),
    }
    for e in expert_counts:
        variants[f"mode_e{e}_cached"] = _policy(dataclasses.replace(base, num_experts=e), 0)
    if precision != "fp32":
        variants[f"mode_cached_{precision}"] = _policy(base, 0)
        variants[f"mode_cached_{precision}"].denoiser.precision = precision
    return variants


def make_batch(cfg: MoDEConfig, batch_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        STATE_KEY: torch.randn(batch_size, cfg.n_obs_steps, cfg.state_dim, generator=gen),
        GOAL_KEY: torch.randn(batch_size, cfg.goal_dim, generator=gen),
    }


# ------------------------------------------------------------------ counting
def chunk_flops(policy: MoDEPolicy, batch: dict[str, torch.Tensor]) -> int:
    """FLOPs of producing one action chunk (all sampling steps), counted by torch."""
    policy.denoiser.sampling_plan()  # build the cache outside the count
    counter = FlopCounterMode(display=False)
    with counter:
        policy.predict_action_chunk(batch)
    return counter.get_total_flops()


def expert_bytes(policy: MoDEPolicy) -> int:
    return sum(
        t.numel() * t.element_size()
        for layer in policy.denoiser.net.moe_layers()
        for t in (layer.experts.w13, layer.experts.w2)
    )


def chunk_weight_bytes(policy: MoDEPolicy) -> int:
    """Bytes of weights one action chunk must read at least once per network evaluation: the
    transformer's active parameters (dense parts + the chosen experts; the routers only where
    the expert cache is off, since the cache replaces them) times the evaluations, plus the
    encoders once. At batch 1 this, not the FLOPs, may bound the time."""
    counts = policy.parameter_counts()
    plan = policy.denoiser.sampling_plan()
    element = next(policy.parameters()).element_size()
    routers = 0
    if plan.cached:
        routers = sum(p.numel() for layer in policy.denoiser.net.moe_layers() for p in layer.router.parameters())
    encoders = counts["active_params"] - counts["transformer"]["active"]
    return ((counts["transformer"]["active"] - routers) * len(plan.levels) + encoders) * element


def chunk_expert_union(policy: MoDEPolicy) -> dict[str, Any]:
    """Which experts one cached chunk reads, from the routers' choices at every evaluation of the
    sampling plan (:func:`expert_union` of them). At batch 1 a chunk reads all of them, where
    the dense model reads its one MLP per layer."""
    from ..report.analysis import expert_routing

    return expert_union([layer["chosen"] for layer in expert_routing(policy)["layers"]], policy.config.top_k)


def expert_union(chosen: list[list[list[int]]], top_k: int) -> dict[str, Any]:
    """``chosen``: per layer, the experts picked at each evaluation -> per layer the distinct
    expert sets (``pairs_per_layer``) and distinct experts (``experts_per_layer``), and
    ``mlp_bytes_over_dense_active``: those experts' weights over a dense MLP's with the same
    active parameters (``top_k`` experts' worth), averaged over layers."""
    sets = [{tuple(sorted(step)) for step in layer} for layer in chosen]
    experts = [len(set().union(*layer_sets)) for layer_sets in sets]
    return {
        "pairs_per_layer": [len(x) for x in sets],
        "experts_per_layer": experts,
        "mlp_bytes_over_dense_active": sum(experts) / (top_k * len(experts)) if experts else 1.0,
    }


def latency_bounds(
    variants: dict[str, Any],
    flops: dict[str, int],
    weight_bytes: dict[str, int],
    latencies: dict[str, dict[str, float]],
    gflops: float,
    gbps: float,
) -> dict[str, dict[str, float]]:
    """Per variant: the FLOP bound (FLOPs / matmul throughput), the weight-traffic bound
    (weight bytes / memory bandwidth), the larger of the two, and measured / that bound."""
    out = {}
    for name in variants:
        if name not in latencies or name not in flops:
            continue
        flop_ms = flops[name] / (gflops * 1e9) * 1e3
        byte_ms = weight_bytes[name] / (gbps * 1e9) * 1e3
        bound = max(flop_ms, byte_ms)
        out[name] = {
            "flop_bound_ms": flop_ms,
            "byte_bound_ms": byte_ms,
            "bound_ms": bound,
            "measured_over_bound": latencies[name]["median_ms"] / bound,
        }
    return out


def profile_ops(policy: MoDEPolicy, batch: dict[str, torch.Tensor], top: int = 8) -> list[dict[str, Any]]:
    """The ops that take the time in one chunk (self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    policy.predict_action_chunk(batch)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        policy.predict_action_chunk(batch)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [
        {"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total, "calls": e.count}
        for e in events[:top]
    ]


# ------------------------------------------------------------------ the benchmark
def bench_latency(
    preset: str = "cpu",
    rounds_b1: int = 40,
    rounds_b64: int = 10,
    overrides: dict[str, Any] | None = None,
    profile: bool = True,
    progress: bool = True,
    onnx: bool = False,
    repeat_b1: int = 3,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Run the latency benchmark; returns the figures and ratios as a dict.
    ``onnx``: also time the exported ONNX sampler at batch 1 (skipped without onnxruntime).
    ``precision``: 'bf16' adds ``mode_cached_bf16`` (see module docstring).
    ``repeat_b1``: calls of each variant in a row per batch-1 round, the first timed cold and
    the others warm (:func:`time_side_by_side`); 1 times every call cold."""
    base = get_preset(preset, **{"state_dim": 39, "action_dim": 4, **(overrides or {})})
    if base.routing != "noise":
        raise ConfigError("bench latency compares noise-routed MoDE with dense baselines: use routing=noise")
    if repeat_b1 < 1:
        raise ConfigError(f"repeat_b1={repeat_b1}: must be >= 1")
    if min(rounds_b1, rounds_b64) < 2:
        raise ConfigError(
            f"rounds_b1={rounds_b1}, rounds_b64={rounds_b64}: need at least 2 timed rounds each "
            "(the spread is an interquartile range)"
        )
    if precision not in PRECISIONS:  # fp32: the weights' own dtype, the other variants
        raise ConfigError(f"precision={precision!r}: choose from {', '.join(PRECISIONS)}")
    log = print if progress else (lambda *a, **k: None)
    variants = build_variants(base, precision=precision)
    low = f"mode_cached_{precision}" if precision != "fp32" else None
    b1, b64 = make_batch(base, 1), make_batch(base, 64)

    cached, modules, uncached = (variants[k] for k in ("mode_cached", "mode_cached_modules", "mode_uncached"))
    diffs, bitwise = [], True
    for batch in (b1, b64):
        noise = torch.randn(batch[GOAL_KEY].shape[0], base.horizon, base.action_dim)
        lean_out = cached.predict_action_chunk(batch, noise)
        diffs.append((lean_out - uncached.predict_action_chunk(batch, noise)).abs().max().item())
        bitwise = bitwise and torch.equal(lean_out, modules.predict_action_chunk(batch, noise))

    precision_diffs = []
    if low is not None:  # same weights and noise as mode_cached: the error the precision adds
        for batch in (b1, b64):
            noise = torch.randn(batch[GOAL_KEY].shape[0], base.horizon, base.action_dim)
            fp32 = cached.predict_action_chunk(batch, noise)
            precision_diffs.append((variants[low].predict_action_chunk(batch, noise) - fp32).abs().max().item())
    union = chunk_expert_union(cached)
    chunks: dict[str, Any] = dict(variants)
    chunks["dense_footprint"] = footprint_control(variants["dense_active"], union["mlp_bytes_over_dense_active"])
    noise = torch.randn(1, base.horizon, base.action_dim)
    control_equal = torch.equal(
        chunks["dense_footprint"].predict_action_chunk(b1, noise),
        variants["dense_active"].predict_action_chunk(b1, noise),
    )
    if onnx and onnx_runtime_available():
        log("exporting the cached sampler and the dense baseline to ONNX (batch 1)...")
        with tempfile.TemporaryDirectory(prefix="mode-policy-bench-") as tmp:  # the session keeps the graph
            for name, source in EXPORTED.items():
                path = export_sampler(variants[source], f"{tmp}/{name}.onnx", "onnx", batch_size=1)
                chunks[name] = OrtChunk(path, threads=torch.get_num_threads())
        noise = torch.randn(1, base.horizon, base.action_dim)
        onnx_diff = (
            (chunks["onnx_cached"].predict_action_chunk(b1, noise) - cached.predict_action_chunk(b1, noise))
            .abs()
            .max()
            .item()
        )
    probes = machine_probes()
    main = {k: v for k, v in variants.items() if not k.startswith("mode_e")}
    log(f"timing batch 1 ({rounds_b1} rounds x {len(chunks)} variants + 2 probes, {repeat_b1} calls each)...")
    lat_b1 = time_side_by_side(
        {**{k: _chunk_fn(v, b1) for k, v in chunks.items()}, **probes}, rounds_b1, repeat=repeat_b1
    )
    log(f"timing batch 64 ({rounds_b64} rounds x {len(main)} variants + 2 probes)...")
    lat_b64 = time_side_by_side({**{k: _chunk_fn(v, b64) for k, v in main.items()}, **probes}, rounds_b64)

    flops = {name: chunk_flops(p, b1) for name, p in main.items()}
    flops_b64 = {name: 64 * f for name, f in flops.items()}  # every operation is per sample
    weight_bytes = {name: chunk_weight_bytes(p) for name, p in main.items()}
    plan = cached.denoiser.sampling_plan()
    cache_bytes, weights_bytes = plan.cache_bytes, expert_bytes(cached)
    counts = {name: p.parameter_counts() for name, p in main.items()}
    _, clock_name = bench_clock()

    def ratio(a: dict, x: str, y: str) -> float:
        return a[x]["median_ms"] / a[y]["median_ms"]

    bounds = {}
    throughput = {}
    for size, lat, fl in (("b1", lat_b1, flops), ("b64", lat_b64, flops_b64)):
        gflops, gbps = probe_throughputs(lat)
        throughput[size] = {"matmul_gflops": gflops, "memory_gbps": gbps}
        bounds[size] = latency_bounds(main, fl, weight_bytes, lat, gflops, gbps)
    if "onnx_cached" in lat_b1:  # the same function, FLOPs and weights as the eager chunk it was exported from
        bounds["b1"].update(
            latency_bounds(
                EXPORTED,
                {k: flops[v] for k, v in EXPORTED.items()},
                {k: weight_bytes[v] for k, v in EXPORTED.items()},
                lat_b1,
                *probe_throughputs(lat_b1),
            )
        )

    result: dict[str, Any] = {
        "preset": preset,
        "config": {
            k: getattr(base, k)
            for k in (
                "n_layers",
                "d_model",
                "n_heads",
                "num_experts",
                "top_k",
                "horizon",
                "num_inference_steps",
                "sampler",
                "schedule",
            )
        },
        "torch_threads": torch.get_num_threads(),
        "clock": clock_name,
        "repeat_b1": repeat_b1,
        "latency_b1": lat_b1,
        "latency_b64": lat_b64,
        "flops_per_chunk": flops,
        "params": counts,
        "cache_bytes": cache_bytes,
        "expert_weight_bytes": weights_bytes,
        "chunk_experts": union,
        "footprint_copies": chunks["dense_footprint"].denoiser.sampling_plan().lean.copies,
        "footprint_control_equal": control_equal,
        "exact_max_abs_diff": max(diffs),
        "lean_bitwise_equal": bitwise,
        "throughput": throughput,
        "bounds": bounds,
        "ratios": {
            "lean_over_modules_b1": ratio(lat_b1, "mode_cached", "mode_cached_modules"),
            "lean_over_modules_b64": ratio(lat_b64, "mode_cached", "mode_cached_modules"),
            "cached_over_bound_b1": bounds["b1"]["mode_cached"]["measured_over_bound"],
            "cached_modules_over_bound_b1": bounds["b1"]["mode_cached_modules"]["measured_over_bound"],
            "cached_over_bound_b64": bounds["b64"]["mode_cached"]["measured_over_bound"],
            "cached_over_uncached_b1": ratio(lat_b1, "mode_cached", "mode_uncached"),
            "cached_over_uncached_b64": ratio(lat_b64, "mode_cached", "mode_uncached"),
            "cached_over_dense_active_b1": ratio(lat_b1, "mode_cached", "dense_active"),
            "cached_over_dense_active_b64": ratio(lat_b64, "mode_cached", "dense_active"),
            "modules_cached_over_dense_active_b1": ratio(lat_b1, "mode_cached_modules", "dense_active_modules"),
            "modules_cached_over_dense_active_b64": ratio(lat_b64, "mode_cached_modules", "dense_active_modules"),
            "cached_over_dense_total_b1": ratio(lat_b1, "mode_cached", "dense_total"),
            "cached_over_dense_total_b64": ratio(lat_b64, "mode_cached", "dense_total"),
            "experts8_over_experts4_b1": ratio(lat_b1, "mode_e8_cached", "mode_cached"),
            "experts16_over_experts4_b1": ratio(lat_b1, "mode_e16_cached", "mode_cached"),
            "flops_cached_over_dense_total": flops["mode_cached"] / flops["dense_total"],
            "flops_cached_over_dense_active": flops["mode_cached"] / flops["dense_active"],
            "cache_bytes_over_expert_bytes": cache_bytes / weights_bytes,
        },
    }
    if low is not None:
        result["precision"] = precision
        result["precision_max_abs_action_diff"] = max(precision_diffs)
        result["ratios"][f"{low}_over_cached_b1"] = ratio(lat_b1, low, "mode_cached")
        result["ratios"][f"{low}_over_cached_b64"] = ratio(lat_b64, low, "mode_cached")
    if "onnx_cached" in lat_b1:
        result["onnx_max_abs_diff"] = onnx_diff
        result["ratios"]["onnx_over_cached_b1"] = ratio(lat_b1, "onnx_cached", "mode_cached")
        result["ratios"]["onnx_over_bound_b1"] = bounds["b1"]["onnx_cached"]["measured_over_bound"]
        result["ratios"]["onnx_cached_over_onnx_dense_active_b1"] = ratio(lat_b1, "onnx_cached", "onnx_dense_active")
    pairs = {
        "cached_over_dense_active_b1": ("mode_cached", "dense_active"),
        "cached_over_uncached_b1": ("mode_cached", "mode_uncached"),
        "footprint_over_dense_active_b1": ("dense_footprint", "dense_active"),
        "cached_over_footprint_b1": ("mode_cached", "dense_footprint"),
    }
    if "onnx_cached" in lat_b1:
        pairs["onnx_cached_over_onnx_dense_active_b1"] = ("onnx_cached", "onnx_dense_active")
    result["paired"] = {key: paired_ratio(lat_b1, a, b) for key, (a, b) in pairs.items()}
    result["paired"]["cached_over_dense_active_b64"] = paired_ratio(lat_b64, "mode_cached", "dense_active")
    if repeat_b1 > 1:  # the same pairs on each round's first call, after the other variants ran
        result["paired"].update(
            {f"{key}_cold": paired_ratio(lat_b1, a, b, samples="cold_samples_ms") for key, (a, b) in pairs.items()}
        )
    if profile:
        log("profiling the cached path...")
        result["profile"] = {
            name: {
                "flops": fl["mode_cached"],
                "measured_ms": lat["mode_cached"]["median_ms"],
                "top_ops": profile_ops(cached, batch),
            }
            for name, batch, lat, fl in (("b1", b1, lat_b1, flops), ("b64", b64, lat_b64, flops_b64))
        }
    return result


def _chunk_fn(policy: Any, batch: dict[str, torch.Tensor]) -> Callable[[], Any]:
    return lambda: policy.predict_action_chunk(batch)


def format_latency(result: dict[str, Any]) -> str:
    """Human-readable table of a ``bench_latency`` result."""
    lines = [
        f"bench latency, preset {result['preset']}: {result['config']}",
        f"(torch threads: {result['torch_threads']}; clock: {result['clock']}; medians of interleaved rounds"
        + (
            f"; b1: {result['repeat_b1']} calls a round, warm = calls 2+, cold = call 1)"
            if result.get("repeat_b1", 1) > 1
            else ")"
        ),
        "",
    ]
    lines.append(
        f"{'variant':<21} {'b1 median ms':>13} {'IQR':>7} {'b1 cold ms':>11} {'b64 median ms':>14} {'IQR':>7} "
        f"{'GFLOP/chunk (b1)':>17} {'active params':>14}"
    )
    for name, b1 in result["latency_b1"].items():
        if name.startswith("probe_"):
            continue
        b64 = result["latency_b64"].get(name)
        flops = result["flops_per_chunk"].get(name)
        params = result["params"].get(name, {}).get("active_params")
        lines.append(
            f"{name:<21} {b1['median_ms']:>13.2f} {b1['iqr_ms']:>7.2f} "
            + (f"{b1['cold_median_ms']:>11.2f} " if "cold_median_ms" in b1 else f"{'':>11} ")
            + (f"{b64['median_ms']:>14.1f} {b64['iqr_ms']:>7.1f} " if b64 else f"{'':>14} {'':>7} ")
            + (f"{flops / 1e9:>17.3f} " if flops else f"{'':>17} ")
            + (f"{params:>14,}" if params else "")
        )
    lines.append("")
    for key, value in result["ratios"].items():
        lines.append(f"{key:<38} {value:8.3f}")
    lines.append("paired (median of per-round ratios, 95 % bootstrap interval):")
    for key, value in result.get("paired", {}).items():
        lo, hi = value["ci95"]
        lines.append(f"  {key:<36} {value['median']:8.3f} [{lo:.3f}, {hi:.3f}] over {value['rounds']} rounds")
    lines.append(f"{'exact_max_abs_diff (cached vs routed)':<38} {result['exact_max_abs_diff']:8.1e}")
    lines.append(f"{'lean_bitwise_equal (vs module path)':<38} {result['lean_bitwise_equal']!s:>8}")
    if "onnx_max_abs_diff" in result:
        lines.append(f"{'onnx_max_abs_diff (vs eager cached)':<38} {result['onnx_max_abs_diff']:8.1e}")
    if "precision_max_abs_action_diff" in result:
        label = f"{result['precision']}_max_abs_diff (vs fp32 cached)"
        lines.append(f"{label:<38} {result['precision_max_abs_action_diff']:8.1e}")
    lines.append(f"{'cache bytes / expert bytes':<38} {result['cache_bytes']:,} / {result['expert_weight_bytes']:,}")
    union = result.get("chunk_experts")
    if union:
        lines.append(
            f"experts one cached chunk reads per layer (of {result['config']['num_experts']}): "
            f"{union['experts_per_layer']}, in {union['pairs_per_layer']} distinct sets; their MLP weights "
            f"{union['mlp_bytes_over_dense_active']:.2f}x dense_active's"
        )
    if "footprint_copies" in result:
        lines.append(
            f"dense_footprint: dense_active reading {result['footprint_copies']} copies of its MLP weights "
            f"per chunk (same actions: {result['footprint_control_equal']}); "
            "footprint_over_dense_active_b1 is what that footprint alone costs here"
        )
    lines.append("\nbounds of this machine, from the probes timed in the same rounds:")
    for size, tp in result["throughput"].items():
        lines.append(
            f"  {size}: {tp['matmul_gflops']:.1f} GFLOP/s matmul (fp32, {MATMUL_N}^3), "
            f"{tp['memory_gbps']:.1f} GB/s memory (copy of {COPY_MB} MB)"
        )
    lines.append(f"{'variant':<21} {'size':>4} {'flop-bound ms':>14} {'byte-bound ms':>14} {'measured / bound':>17}")
    for size, rows in result["bounds"].items():
        for name, row in rows.items():
            lines.append(
                f"{name:<21} {size:>4} {row['flop_bound_ms']:>14.2f} {row['byte_bound_ms']:>14.2f} "
                f"{row['measured_over_bound']:>17.1f}"
            )
    for name, prof in result.get("profile", {}).items():
        lines.append(
            f"\ncached {name}: {prof['flops'] / 1e9:.3f} GFLOP, measured {prof['measured_ms']:.2f} ms; "
            "top ops (profiler self time):"
        )
        for op in prof["top_ops"][:6]:
            lines.append(f"    {op['op']:<32} {op['self_ms']:8.2f} ms  {op['share']:6.1%}  x{op['calls']}")
    return "\n".join(lines)
