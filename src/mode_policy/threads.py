"""How many torch CPU threads to use: the cores other processes leave free.

Two torch threads on a 2-core machine where another process keeps one core busy run about
ten times slower than one thread, because every parallel region waits for the thread that
shares its core. So, unless the user chose (``threads > 0``, or ``OMP_NUM_THREADS``), use
the cores that were idle over a short sample of the machine's load when the job starts, and
while it runs (:class:`ThreadGovernor`: training, the server) follow the neighbours that start or stop
later.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

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


BUSY_FRACTION = 0.3
"""Share of a core that other processes must use for it to count as taken while this job runs.
A spinning neighbour that shares a core with one of our threads gets only part of that core
(0.4-0.6 measured here), and that is already what makes our threads wait on each other."""


class ThreadGovernor:
    """Keeps a running job's torch thread count at the cores other processes leave free.

    Call :meth:`step` after each unit of work (a training step). Over windows of at least
    ``window_s`` seconds of wall time it measures what other processes used: the machine's
    busy CPU time (``/proc/stat``) minus this process's own (``time.process_time``, every
    thread). A core counts as taken from ``BUSY_FRACTION`` of it on. The count drops after one
    window that asks for fewer threads (a collapse costs ~10x) and rises after two in a row that
    allow more (so a short burst next door does not make it flap). Never above ``max_threads``
    or below 1. :meth:`restart` drops the current window (call it after a pause that ran other
    work, e.g. an evaluation with worker processes). ``changes``: (step, threads, others' cores).
    """

    def __init__(
        self,
        threads: int,
        max_threads: int,
        window_s: float = 3.0,
        clock: Callable[[], float] = time.perf_counter,
        cpu_times: Callable[[], tuple[float, float] | None] = _cpu_times,
        own_cpu: Callable[[], float] = time.process_time,
        set_threads: Callable[[int], None] = torch.set_num_threads,
        cpu_count: int | None = None,
    ) -> None:
        self.threads, self.max_threads, self.window_s = threads, max(1, max_threads), window_s
        self._clock, self._cpu_times, self._own_cpu, self._set = clock, cpu_times, own_cpu, set_threads
        self._cpu_count = cpu_count or os.cpu_count() or 1
        self._raise_votes = 0
        self.steps = 0
        self.changes: list[tuple[int, int, float]] = []
        self.restart()

    def restart(self) -> None:
        """Start a new measurement window now."""
        self._start = (self._clock(), self._cpu_times(), self._own_cpu())

    def others_busy(self, wall: float, machine: tuple[float, float], own_s: float) -> float:
        """Cores other processes kept busy over a window: ``wall`` seconds, the machine's
        (busy, total) jiffies in it, and this process's CPU seconds in it."""
        busy, total = machine
        if total <= 0 or wall <= 0:
            return 0.0
        return max(0.0, busy / total * self._cpu_count - own_s / wall)

    def target(self, others: float) -> int:
        """Threads for a window in which other processes kept ``others`` cores busy."""
        taken = math.floor(others + 1 - BUSY_FRACTION)
        return max(1, min(self.max_threads, self._cpu_count - taken))

    def step(self) -> int | None:
        """Count one unit of work; at the end of a window, maybe change the thread count.
        Returns the new count when it changed, else None."""
        self.steps += 1
        now = self._clock()
        start_wall, start_cpu, start_own = self._start
        if now - start_wall < self.window_s or start_cpu is None:
            return None
        cpu, own = self._cpu_times(), self._own_cpu()
        self._start = (now, cpu, own)
        if cpu is None:
            return None
        others = self.others_busy(now - start_wall, (cpu[0] - start_cpu[0], cpu[1] - start_cpu[1]), own - start_own)
        want = self.target(others)
        if want > self.threads:
            self._raise_votes += 1
            if self._raise_votes < 2:
                return None
        self._raise_votes = 0
        if want == self.threads:
            return None
        self.threads = want
        self._set(want)
        self.changes.append((self.steps, want, round(others, 2)))
        return want


def make_governor(
    requested: int, threads: int, processes: int = 1, set_threads: Callable[[int], None] = torch.set_num_threads
) -> ThreadGovernor | None:
    """A :class:`ThreadGovernor` for a job that chose ``threads`` by itself (``requested`` 0, no
    ``OMP_NUM_THREADS``), alone on this machine (``processes`` 1: DDP ranks would count each
    other as neighbours) and on Linux; else None (the count stays as it is). ``set_threads``
    applies a new count (in the thread that steps the governor)."""
    if requested > 0 or os.environ.get("OMP_NUM_THREADS") or processes > 1 or _cpu_times() is None:
        return None
    return ThreadGovernor(threads, available_cores(), set_threads=set_threads)
