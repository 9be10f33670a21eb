"""Thread choice: the user's number wins, OMP_NUM_THREADS is respected, otherwise the free cores."""

import subprocess
import sys

import pytest
import torch

from mode_policy import threads


def test_requested_threads_win(monkeypatch):
    monkeypatch.setattr(threads, "busy_cores", lambda sample_s=0.3: 1.0)
    assert threads.choose_threads(3) == 3


def test_free_cores_are_used_and_shared_between_processes(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    monkeypatch.setattr(threads, "busy_cores", lambda sample_s=0.3: 2.6)  # a neighbour keeps ~3 cores busy
    assert threads.choose_threads() == 5
    assert threads.choose_threads(processes=2) == 2
    monkeypatch.setattr(threads, "busy_cores", lambda sample_s=0.3: 7.9)
    assert threads.choose_threads() == 1  # never zero


def test_omp_num_threads_is_the_users_choice(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(threads, "busy_cores", lambda sample_s=0.3: 0.0)
    assert threads.choose_threads() == torch.get_num_threads()


def test_busy_cores_sees_a_busy_neighbour():
    if threads.busy_cores(0.05) is None:
        pytest.skip("no /proc/stat on this system")
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time() + 5\nwhile time.time() < t: pass"])
    try:
        import time

        time.sleep(0.5)
        assert threads.busy_cores(0.5) > 0.6  # the spinning process keeps about one core busy
    finally:
        spin.kill()
        spin.wait()


class FakeMachine:
    """A 2-core machine whose other processes use ``others`` cores while this job uses ``own``."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.jiffies = [0.0, 0.0]  # busy, total (100 per core-second)
        self.own_s = 0.0
        self.others, self.own = 0.0, 2.0

    def run(self, seconds: float) -> None:
        self.wall += seconds
        self.jiffies[0] += 100 * seconds * min(2.0, self.others + self.own)
        self.jiffies[1] += 100 * seconds * 2
        self.own_s += seconds * self.own

    def governor(self, threads: int = 2):
        self.set_calls = []
        return threads_mod.ThreadGovernor(
            threads,
            max_threads=2,
            window_s=3.0,
            clock=lambda: self.wall,
            cpu_times=lambda: tuple(self.jiffies),
            own_cpu=lambda: self.own_s,
            set_threads=self.set_calls.append,
            cpu_count=2,
        )


threads_mod = threads


def test_governor_drops_a_thread_when_a_neighbour_starts_and_takes_it_back_when_it_stops():
    machine = FakeMachine()
    gov = machine.governor(2)
    for _ in range(10):  # quiet: 1 s steps, our two threads use both cores
        machine.run(1.0)
        assert gov.step() is None
    machine.others, machine.own = 0.5, 1.5  # a spinner starts and gets half the core it shares with us
    results = []
    for _ in range(6):  # two windows
        machine.run(1.0)
        results.append(gov.step())
    assert [r for r in results if r is not None] == [1] and machine.set_calls == [1] and gov.threads == 1
    assert gov.changes[-1][1] == 1 and 0.3 <= gov.changes[-1][2] <= 0.5
    machine.others, machine.own = 1.0, 1.0  # on one thread the spinner has its own core: stay at 1
    for _ in range(8):
        machine.run(1.0)
        assert gov.step() is None
    machine.others = 0.0  # the spinner stops: one quiet window is not enough, two are
    results = []
    for _ in range(7):
        machine.run(1.0)
        results.append(gov.step())
    assert results.count(2) == 1 and results.index(2) >= 5 and machine.set_calls == [1, 2]


def test_governor_ignores_short_bursts_and_restarts_windows():
    machine = FakeMachine()
    gov = machine.governor(2)
    machine.run(2.0)
    assert gov.step() is None  # shorter than a window: no decision
    machine.others, machine.own = 2.0, 0.0  # an evaluation's workers take the machine...
    machine.run(30.0)
    gov.restart()  # ...and the training loop says so
    machine.others, machine.own = 0.0, 2.0
    machine.run(3.5)
    assert gov.step() is None and gov.threads == 2 and machine.set_calls == []
    # a burst next door below BUSY_FRACTION of a core does not count
    machine.others, machine.own = 0.2, 1.8
    machine.run(3.5)
    assert gov.step() is None and gov.threads == 2


def test_governor_only_for_a_job_that_chose_its_own_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    if threads._cpu_times() is None:
        pytest.skip("no /proc/stat on this system")
    assert isinstance(threads.make_governor(0, 2), threads.ThreadGovernor)
    assert threads.make_governor(2, 2) is None  # --threads 2
    assert threads.make_governor(0, 1, processes=2) is None  # DDP ranks on one machine
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.make_governor(0, 2) is None
