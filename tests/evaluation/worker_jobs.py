"""Jobs for tests/evaluation/test_workers.py, in a module of their own so that spawned workers import only
this (not torch, nor the test module)."""

from __future__ import annotations

import os
import signal
import time


def fake_evaluate(policy, units, log, log_writer, progress, die_at=-1, slow_at=-1, **_):
    """An ``evaluate`` that logs each unit; at ``die_at`` its process is killed, at ``slow_at``
    it sleeps long enough that only being stopped ends it in time."""
    for unit in units:
        if unit == die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if unit == slow_at:
            time.sleep(300)
        log.append(log_writer, {"unit": int(unit)})


def no_policy() -> None:
    return None


def square(x: int) -> int:
    """x * x; raises at 4, sleeps long at 5."""
    if x == 4:
        raise ValueError("four")
    if x == 5:
        time.sleep(300)
    return x * x


def square_or_die(x: int) -> int:
    """x * x; its process is killed at -9, and it raises at 4."""
    if x == -9:
        os.kill(os.getpid(), signal.SIGKILL)
    if x == 4:
        raise ValueError("four")
    return x * x
