"""bench latency: one short round of the side-by-side benchmark on the tiny preset."""

import dataclasses
import math
import time

import pytest

from mode_policy.bench.latency import bench_latency, format_latency
from mode_policy.bench.timing import paired_ratio, time_side_by_side
from mode_policy.errors import ConfigError

VARIANTS = {
    "mode_cached",
    "mode_cached_modules",
    "mode_uncached",
    "dense_active",
    "dense_active_modules",
    "dense_total",
    "mode_e8_cached",
    "mode_e16_cached",
    "dense_footprint",
}
MAIN = VARIANTS - {"mode_e8_cached", "mode_e16_cached", "dense_footprint"}
PROBES = {"probe_matmul", "probe_copy"}


def test_one_round_of_latency_bench():
    result = bench_latency("tiny", rounds_b1=2, rounds_b64=2, profile=False, progress=False)
    assert set(result["latency_b1"]) == VARIANTS | PROBES and set(result["latency_b64"]) == MAIN | PROBES
    for timing in (*result["latency_b1"].values(), *result["latency_b64"].values()):
        assert timing["runs"] == 2 and timing["median_ms"] > 0 and timing["iqr_ms"] >= 0
    assert result["exact_max_abs_diff"] < 1e-5  # the expert cache is exact
    assert result["lean_bitwise_equal"]  # the lean sampler computes what the module path computes
    assert result["clock"] == "thread CPU time"  # one torch thread in the tests
    assert result["ratios"]["lean_over_modules_b1"] > 0
    assert set(result["flops_per_chunk"]) == MAIN and all(f > 0 for f in result["flops_per_chunk"].values())
    # same total parameters as dense_total, fewer FLOPs per chunk
    assert result["ratios"]["flops_cached_over_dense_total"] < 1
    t = {name: c["transformer"] for name, c in result["params"].items()}
    # MoDE is as big as dense_total but runs about as much as dense_active (plus its routers)
    assert t["dense_active"]["active"] < t["mode_cached"]["active"] < 1.1 * t["dense_active"]["active"]
    assert abs(t["mode_cached"]["total"] / t["dense_total"]["total"] - 1) < 0.1
    assert 0 < result["cache_bytes"] < result["expert_weight_bytes"]  # top-2: views, only mixing weights copied
    assert "exact_max_abs_diff" in format_latency(result)
    paired = result["paired"]["cached_over_dense_active_b64"]
    assert paired["rounds"] == 2 and paired["ci95"][0] <= paired["median"] <= paired["ci95"][1]
    assert "cached_over_dense_active_b1" in format_latency(result)
    # batch 1 by default: 3 calls a round, the first also kept as the cold time, paired too
    assert result["repeat_b1"] == 3 and all("cold_median_ms" in t for t in result["latency_b1"].values())
    assert "cold_median_ms" not in result["latency_b64"]["mode_cached"]
    assert result["paired"]["cached_over_dense_active_b1_cold"]["rounds"] == 2
    union = result["chunk_experts"]
    assert all(2 <= e <= 4 for e in union["experts_per_layer"]) and "experts one cached chunk reads" in format_latency(
        result
    )
    # the footprint control: as many MLP weight copies as the cached chunk reads experts' worth, same actions
    assert result["footprint_copies"] == math.ceil(union["mlp_bytes_over_dense_active"] - 1e-9)
    assert result["footprint_control_equal"] and result["paired"]["cached_over_footprint_b1"]["rounds"] == 2


def test_footprint_control_reads_distinct_copies_in_blocks():
    import torch

    from mode_policy import MoDEPolicy, get_preset
    from mode_policy.bench.footprint_control import FootprintControl, footprint_control
    from mode_policy.bench.latency import make_batch

    cfg = get_preset("tiny", state_dim=39, action_dim=4, routing="dense", dense_mlp_ratio=8, num_inference_steps=10)
    dense = MoDEPolicy(cfg).eval()
    with torch.no_grad():
        torch.nn.init.normal_(dense.denoiser.net.action_out.weight, std=0.02)
    control = footprint_control(dense, 1.5)  # 1.5x the MLP bytes -> 2 copies
    lean = control.denoiser.sampling_plan().lean
    assert isinstance(lean, FootprintControl) and lean.copies == 2
    assert [lean.copy_of(j) for j in range(10)] == [0] * 5 + [1] * 5
    ptrs = [{w.data_ptr() for layer in s.layers for w in layer.dense} for s in lean.samplers]
    assert not ptrs[0] & ptrs[1]  # the second copy owns its storage
    assert dense.denoiser.sampling_plan().lean is not lean  # the source policy is left as it was
    batch = make_batch(cfg, 2)
    noise = torch.randn(2, cfg.horizon, cfg.action_dim)
    assert torch.equal(control.predict_action_chunk(batch, noise), dense.predict_action_chunk(batch, noise))
    # a copy that differs shows up in the actions: the second half of the chunk really reads copy 1
    with torch.no_grad():
        lean.samplers[1].layers[0].dense[1].mul_(2.0)
    assert not torch.equal(control.predict_action_chunk(batch, noise), dense.predict_action_chunk(batch, noise))
    with pytest.raises(ConfigError, match="dense lean sampler"):
        mode = MoDEPolicy(get_preset("tiny", state_dim=39, action_dim=4)).eval()
        FootprintControl(mode.denoiser.sampling_plan().lean, 2)


def test_the_experts_a_chunk_reads():
    import torch

    from mode_policy import MoDEPolicy, get_preset
    from mode_policy.bench.latency import chunk_expert_union, expert_union

    # layer 0 switches from {0, 1} to {1, 3} mid-chunk (3 experts read); layer 1 keeps {2, 3}
    union = expert_union([[[0, 1], [1, 0], [3, 1], [1, 3]], [[2, 3]] * 4], top_k=2)
    assert union == {"pairs_per_layer": [2, 1], "experts_per_layer": [3, 2], "mlp_bytes_over_dense_active": 1.25}
    policy = MoDEPolicy(get_preset("tiny", state_dim=39, action_dim=4)).eval()
    with torch.no_grad():  # every router prefers experts 1 and 3 at every noise level
        for layer in policy.denoiser.net.moe_layers():
            layer.router.net[2].bias.copy_(torch.tensor([-50.0, 50.0, -50.0, 50.0]))
    n_layers = policy.config.n_layers
    assert chunk_expert_union(policy) == {
        "pairs_per_layer": [1] * n_layers,
        "experts_per_layer": [2] * n_layers,
        "mlp_bytes_over_dense_active": 1.0,
    }


def _burn(ms: float) -> None:
    start = time.thread_time()
    while time.thread_time() - start < ms / 1e3:
        pass


def test_repeated_calls_split_cold_from_warm():
    # "a" is slow (6 ms) on a call right after another callable ran, fast (1 ms) on a repeat
    last = []

    def a():
        _burn(6 if last[-1:] != ["a"] else 1)
        last.append("a")

    fns = {"a": a, "b": lambda: last.append("b")}
    three = time_side_by_side(fns, rounds=4, warmup=0, repeat=3)["a"]
    assert three["median_ms"] < 3 < 5 < three["cold_median_ms"]
    assert len(three["samples_ms"]) == len(three["cold_samples_ms"]) == three["runs"] == 4
    once = time_side_by_side(fns, rounds=4, warmup=0, repeat=1)["a"]
    assert once["median_ms"] > 5 and "cold_median_ms" not in once  # every call follows "b"
    with pytest.raises(ConfigError, match="repeat=0"):
        time_side_by_side(fns, rounds=2, repeat=0)


def test_paired_ratio_pairs_rounds_not_medians():
    # b is 2x a in every round while both drift 10x across rounds: the paired ratio is exactly 0.5
    timings = {"a": {"samples_ms": [1.0, 10.0, 2.0, 5.0]}, "b": {"samples_ms": [2.0, 20.0, 4.0, 10.0]}}
    assert paired_ratio(timings, "a", "b") == {"median": 0.5, "ci95": [0.5, 0.5], "rounds": 4}
    timings["b"]["samples_ms"] = [1.0, 1.0, 1.0, 1.0]  # the reverse pairing spreads the interval
    wide = paired_ratio(timings, "a", "b")
    assert wide["ci95"][0] < wide["median"] < wide["ci95"][1] and wide["median"] == 3.5


def test_bench_needs_noise_routing():
    with pytest.raises(ConfigError, match="routing=noise"):
        bench_latency("tiny", overrides={"routing": "token"}, progress=False)


def test_bounds_of_this_machine_and_weight_traffic():
    from mode_policy import MoDEPolicy, get_preset
    from mode_policy.bench.latency import chunk_weight_bytes
    from mode_policy.bench.timing import memory_gbps

    assert memory_gbps(megabytes=16, repeats=2) > 0.1
    policy = MoDEPolicy(get_preset("tiny", state_dim=39, action_dim=4)).eval()
    counts = policy.parameter_counts()
    steps = policy.config.num_inference_steps  # ddim: one network evaluation per step
    routers = sum(p.numel() for layer in policy.denoiser.net.moe_layers() for p in layer.router.parameters())
    encoders = (counts["active_params"] - counts["transformer"]["active"]) * 4
    per_eval = (counts["transformer"]["active"] - routers) * 4  # the expert cache replaces the routers
    assert routers > 0 and chunk_weight_bytes(policy) == per_eval * steps + encoders
    policy.denoiser.use_expert_cache = False  # uncached: every evaluation also reads the routers
    assert chunk_weight_bytes(policy) == (per_eval + routers * 4) * steps + encoders
    policy.denoiser.use_expert_cache = True
    longer = MoDEPolicy(dataclasses.replace(policy.config, num_inference_steps=2 * steps)).eval()
    assert chunk_weight_bytes(longer) > 1.9 * per_eval * steps  # twice the evaluations, twice the traffic
    result = bench_latency("tiny", rounds_b1=2, rounds_b64=2, profile=True, progress=False, repeat_b1=1)
    assert "cold_median_ms" not in result["latency_b1"]["mode_cached"]
    assert not any(key.endswith("_cold") for key in result["paired"])
    for size in ("b1", "b64"):
        gflops, gbps = (result["throughput"][size][k] for k in ("matmul_gflops", "memory_gbps"))
        for name, row in result["bounds"][size].items():
            assert row["bound_ms"] == max(row["flop_bound_ms"], row["byte_bound_ms"]) > 0
            assert row["measured_over_bound"] == result[f"latency_{size}"][name]["median_ms"] / row["bound_ms"]
            # the throughputs are the probes' medians of the same rounds
            flops = result["flops_per_chunk"][name] * (64 if size == "b64" else 1)
            assert row["flop_bound_ms"] == pytest.approx(flops / gflops / 1e6)
        matmul_ms = result[f"latency_{size}"]["probe_matmul"]["median_ms"]
        assert gflops == pytest.approx(2 * 1024**3 / matmul_ms / 1e6)
        assert gbps == pytest.approx(2 * 64 * 2**20 / result[f"latency_{size}"]["probe_copy"]["median_ms"] / 1e6)
    assert "measured / bound" in format_latency(result)
