"""Workers that fail or die (mode_policy.evaluation.workers): the job ends at once with an error naming what
happened, instead of the forever-hang of a dead ``multiprocessing.Pool`` worker; an evaluation's
rerun then plays only the units its log does not hold."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from worker_jobs import fake_evaluate, no_policy, square, square_or_die

from mode_policy.errors import WorkerDied
from mode_policy.evaluation.parallel import play_in_workers
from mode_policy.evaluation.unit_log import UnitLog
from mode_policy.evaluation.workers import LoudPool, WorkerGroup


@pytest.mark.timeout(120)
def test_a_killed_evaluation_worker_stops_the_other_and_a_rerun_continues(tmp_path: Path) -> None:
    log = UnitLog(tmp_path / "log", {"env": "fake"})
    groups = [[u] for u in range(4)]  # worker 0 gets units 0 and 2, worker 1 units 1 and 3
    start = time.monotonic()
    with pytest.raises(WorkerDied, match=r"(?s)evaluation worker 1 stopped: exit code -9.*run the same command"):
        play_in_workers(fake_evaluate, "units", no_policy, log, 2, groups, progress=False, die_at=3, slow_at=2)
    assert time.monotonic() - start < 60  # not the 300 s of worker 0's slow unit: it was stopped
    kept = set(log.records())
    assert 1 in kept and kept <= {0, 1}  # what each finished before it stopped (0 if worker 0 got to it)
    assert play_in_workers(fake_evaluate, "units", no_policy, log, 2, groups, progress=False) == 4 - len(kept)
    assert set(log.records()) == {0, 1, 2, 3}  # the rerun played the others only


@pytest.mark.timeout(120)
def test_a_worker_groups_error_comes_with_the_workers_traceback() -> None:
    group = WorkerGroup(square, [5, 4], "worker", "a hint")
    with pytest.raises(WorkerDied, match=r"(?s)worker 1 stopped: Traceback.*ValueError: four\na hint"):
        group.get()
    assert all(p.exitcode is not None for p in group.procs)  # the sleeping worker 0 was ended


@pytest.mark.timeout(120)
def test_a_loud_pool_streams_results_and_a_dead_worker_ends_it_with_an_error() -> None:
    with LoudPool(2, "demonstration worker", "a hint") as pool:
        assert list(pool.map(square_or_die, [7, 6, 5, 3, 2, 1, 0])) == [49, 36, 25, 9, 4, 1, 0]
        assert sorted(pool.unordered(square_or_die, [1, 2, 3, 5, 6])) == [1, 4, 9, 25, 36]
        with pytest.raises(ValueError, match="four"):  # an error the task raises comes back as itself
            list(pool.map(square_or_die, [1, 4, 2]))
    with LoudPool(2, "demonstration worker", "a hint") as pool:
        with pytest.raises(WorkerDied, match=r"(?s)a demonstration worker process died \(.*\)\na hint"):
            list(pool.map(square_or_die, [1, 2, -9, 3, 5, 6]))
    with LoudPool(2) as pool, pytest.raises(WorkerDied):
        for _ in pool.unordered(square_or_die, [1, -9, 2, 3]):
            pass
