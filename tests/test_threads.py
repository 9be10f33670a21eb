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
