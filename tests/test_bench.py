"""bench latency: one short round of the side-by-side benchmark on the tiny preset."""

import pytest

from mode_policy.bench import bench_latency, format_latency
from mode_policy.errors import ConfigError

VARIANTS = {"mode_cached", "mode_uncached", "dense_active", "dense_total", "mode_e8_cached", "mode_e16_cached"}
MAIN = VARIANTS - {"mode_e8_cached", "mode_e16_cached"}


def test_one_round_of_latency_bench():
    result = bench_latency("tiny", rounds_b1=2, rounds_b64=2, profile=False, progress=False)
    assert set(result["latency_b1"]) == VARIANTS and set(result["latency_b64"]) == MAIN
    for timing in (*result["latency_b1"].values(), *result["latency_b64"].values()):
        assert timing["runs"] == 2 and timing["median_ms"] > 0 and timing["iqr_ms"] >= 0
    assert result["exact_max_abs_diff"] < 1e-5  # the expert cache is exact
    assert set(result["flops_per_chunk"]) == MAIN and all(f > 0 for f in result["flops_per_chunk"].values())
    # same total parameters as dense_total, fewer FLOPs per chunk
    assert result["ratios"]["flops_cached_over_dense_total"] < 1
    t = {name: c["transformer"] for name, c in result["params"].items()}
    # MoDE is as big as dense_total but runs about as much as dense_active (plus its routers)
    assert t["dense_active"]["active"] < t["mode_cached"]["active"] < 1.1 * t["dense_active"]["active"]
    assert abs(t["mode_cached"]["total"] / t["dense_total"]["total"] - 1) < 0.1
    assert 0 < result["cache_bytes"] < result["expert_weight_bytes"]  # top-2: views, only mixing weights copied
    assert "exact_max_abs_diff" in format_latency(result)


def test_bench_needs_noise_routing():
    with pytest.raises(ConfigError, match="routing=noise"):
        bench_latency("tiny", overrides={"routing": "token"}, progress=False)
