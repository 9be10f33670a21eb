"""How the benchmarks time things: one clock, interleaved side-by-side rounds, paired ratios,
and two probes of the machine (a matrix multiply, a memory copy) timed in the same rounds.

Every ``bench`` figure is read as a ratio to something measured in the same rounds, so that
noise from a shared machine hits all of them alike.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from ..errors import ConfigError

MATMUL_N = 1024
COPY_MB = 64  # twice this crosses the memory bus per copy; above a 32 MB L3


def bench_clock() -> tuple[Callable[[], float], str]:
    """The clock of a side-by-side measurement and its name: this thread's CPU time with one
    torch thread (the work runs here), wall time with more."""
    if torch.get_num_threads() == 1:
        return time.thread_time, "thread CPU time"
    return time.perf_counter, "wall time"


def time_side_by_side(
    fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 2, seed: int = 0, repeat: int = 1
) -> dict[str, dict[str, Any]]:
    """Median and interquartile range (ms) of each callable, over ``rounds`` interleaved rounds.

    With ``repeat`` > 1 every callable runs ``repeat`` times in a row per round: the first call
    is *cold* (the other callables just ran, so its weights were evicted from the caches) and
    goes to ``cold_*``; the median of the others is the round's *warm* time (what a control loop
    calling the same policy sees), the main figure."""
    if repeat < 1:
        raise ConfigError(f"repeat={repeat}: must be >= 1")
    clock, _ = bench_clock()
    rng = random.Random(seed)
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    cold: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        rng.shuffle(names)
        for name in names:
            calls = []
            for _ in range(repeat):
                start = clock()
                fns[name]()
                calls.append((clock() - start) * 1e3)
            cold[name].append(calls[0])
            times[name].append(statistics.median(calls[1:]) if repeat > 1 else calls[0])
    out = {}
    for name, values in times.items():
        q = statistics.quantiles(values, n=4)
        out[name] = {
            "median_ms": statistics.median(values),
            "iqr_ms": q[2] - q[0],
            "runs": len(values),
            "samples_ms": values,
        }  # in round order: round i of every callable ran together
        if repeat > 1:
            out[name].update(cold_median_ms=statistics.median(cold[name]), cold_samples_ms=cold[name])
    return out


def paired_ratio(
    timings: dict[str, dict[str, Any]],
    a: str,
    b: str,
    resamples: int = 2000,
    seed: int = 0,
    samples: str = "samples_ms",
) -> dict[str, Any]:
    """Median over rounds of ``a``'s time / ``b``'s time in the same round, with a 95 % bootstrap
    interval: tighter than a ratio of medians, since a round's machine noise hits both.
    ``samples``: which per-round times to pair (``cold_samples_ms`` for the cold calls)."""
    ratios = [x / y for x, y in zip(timings[a][samples], timings[b][samples])]
    rng = random.Random(seed)
    boots = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    return {
        "median": statistics.median(ratios),
        "ci95": [boots[int(0.025 * resamples)], boots[int(0.975 * resamples) - 1]],
        "rounds": len(ratios),
    }


def machine_probes(repeats: int = 1, n: int = MATMUL_N, megabytes: int = COPY_MB) -> dict[str, Callable[[], Any]]:
    """The two probes to time beside the variants: ``matmul`` (n^3, fp32) and ``copy`` (``megabytes``),
    each ``repeats`` times per call."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)

    def matmul() -> None:
        for _ in range(repeats):
            a @ b

    def copy() -> None:
        for _ in range(repeats):
            dst.copy_(src)

    return {"probe_matmul": matmul, "probe_copy": copy}


def probe_throughputs(
    timings: dict[str, dict[str, float]], repeats: int = 1, n: int = MATMUL_N, megabytes: int = COPY_MB
) -> tuple[float, float]:
    """(GFLOP/s, GB/s) from the median times in ``timings`` of :func:`machine_probes` (same ``repeats``)."""
    gflops = 2 * n**3 * repeats / (timings["probe_matmul"]["median_ms"] / 1e3) / 1e9
    gbps = 2 * megabytes * 2**20 * repeats / (timings["probe_copy"]["median_ms"] / 1e3) / 1e9
    return gflops, gbps


def matmul_gflops(n: int = MATMUL_N, repeats: int = 5) -> float:
    """This CPU's fp32 matrix-multiply throughput (best of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def memory_gbps(megabytes: int = 256, repeats: int = 5) -> float:
    """This machine's memory bandwidth in GB/s: a large tensor copy, bytes read + written (best of ``repeats``)."""
    a = torch.empty(megabytes * 2**20 // 4, dtype=torch.float32).fill_(1.0)
    b = torch.empty_like(a)
    b.copy_(a)
    best = min(_timed(lambda: b.copy_(a)) for _ in range(repeats))
    return 2 * a.numel() * a.element_size() / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
