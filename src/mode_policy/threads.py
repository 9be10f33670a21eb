"""How many torch CPU threads to use: the cores other processes leave free.

Two torch threads on a 2-core machine where another process keeps one core busy run about
ten times slower than one thread, because every parallel region waits for the thread that
shares its core. So, unless the user chose (``threads > 0``, or ``OMP_NUM_THREADS``), use
the cores that were idle over a short sample of the machine's load when the job starts.
"""

from __future__ import annotations

import os
import time

import torch


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat (None off Linux)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return total - idle, total


def busy_cores(sample_s: float = 0.3) -> float | None:
    """Cores kept busy by other processes over ``sample_s`` seconds (this one sleeps meanwhile)."""
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(sample_s)
    second = _cpu_times()
    busy, total = second[0] - first[0], second[1] - first[1]
    return busy / total * os.cpu_count() if total > 0 else 0.0


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_threads(requested: int = 0, processes: int = 1) -> int:
    """``requested`` if > 0; torch's own choice when ``OMP_NUM_THREADS`` is set; else the cores
    not busy with other processes, shared among ``processes`` (DDP ranks on this machine)."""
    if requested > 0:
        return requested
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    cores = available_cores()
    busy = busy_cores()
    free = cores if busy is None else cores - round(busy)
    return max(1, free // max(1, processes))


def apply_threads(requested: int = 0, processes: int = 1) -> int:
    """Set torch's thread count by :func:`choose_threads`; returns it."""
    threads = choose_threads(requested, processes)
    torch.set_num_threads(threads)
    return threads
