"""Worker processes that fail loudly.

``multiprocessing.Pool`` replaces a worker that dies without raising (killed for memory, a
simulator that crashes) and then waits forever for the task it lost: the job hangs with no
message. Two replacements end the job at once with an error that names what happened, and keep
the work already saved, so running the same command again continues:

- :class:`WorkerGroup`: one process per job (an evaluation's shards), watched like an ``AsyncResult``.
- :class:`LoudPool`: a pool of processes over many small tasks (demonstration episodes),
  yielding results in order or as they finish.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from types import TracebackType
from typing import Any

from ..errors import WorkerDied

__all__ = ["LoudPool", "WorkerGroup"]


def _died(code: int | None) -> str:
    return f"exit code {code}" + (" (killed: out of memory?)" if code == -9 else "")


def _run_job(target: Callable[[Any], None], job: Any, errors: Any) -> None:
    """A :class:`WorkerGroup` process: run ``target(job)``; an error's traceback goes to ``errors``."""
    try:
        target(job)
    except BaseException:  # noqa: BLE001 - reported to the parent, then the worker exits
        import traceback

        errors.put(traceback.format_exc())
        raise SystemExit(1) from None


class WorkerGroup:
    """``target(job)`` in one spawned process per job, watched like an ``AsyncResult``
    (``ready``, ``wait``, ``get``). A worker that fails or dies stops the others at once and
    ``get`` raises :class:`~mode_policy.errors.WorkerDied` naming it. ``target`` and the jobs must be picklable."""

    def __init__(
        self, target: Callable[[Any], None], jobs: Sequence[Any], what: str = "worker", hint: str = ""
    ) -> None:
        ctx = mp.get_context("spawn")
        self.what, self.hint = what, hint
        self.errors = ctx.Queue()
        self.procs = [ctx.Process(target=_run_job, args=(target, job, self.errors), daemon=True) for job in jobs]
        for proc in self.procs:
            proc.start()

    def _failed(self) -> list[int]:
        return [k for k, p in enumerate(self.procs) if p.exitcode not in (None, 0)]

    def ready(self) -> bool:
        """Every worker has ended, or one has failed."""
        return all(p.exitcode is not None for p in self.procs) or bool(self._failed())

    def wait(self, timeout: float) -> None:
        """Return when a worker ends, or after ``timeout`` seconds."""
        from multiprocessing.connection import wait

        alive = [p.sentinel for p in self.procs if p.exitcode is None]
        if alive:
            wait(alive, timeout)

    def stop(self) -> None:
        """End the workers still running."""
        for proc in self.procs:
            if proc.exitcode is None:
                proc.terminate()
        for proc in self.procs:
            proc.join()

    def get(self) -> None:
        """Wait for every worker; if one failed, stop the others and raise :class:`~mode_policy.errors.WorkerDied`."""
        while not self.ready():
            self.wait(5.0)
        failed = self._failed()
        if not failed:
            return
        self.stop()
        try:
            detail = self.errors.get(timeout=1.0).rstrip()
        except queue.Empty:  # it died without raising: a signal, or the OS ended it
            detail = _died(self.procs[failed[0]].exitcode)
        raise WorkerDied(f"{self.what} {failed[0]} stopped: {detail}" + (f"\n{self.hint}" if self.hint else ""))


class LoudPool:
    """``processes`` worker processes over many small tasks; a context manager.

    :meth:`map` yields ``fn(item)`` in the order of ``items``, :meth:`unordered` as they finish;
    at most ``2 * processes`` tasks are in flight, so results stream. An error ``fn`` raises
    comes back as itself; a worker that dies ends the job with :class:`~mode_policy.errors.WorkerDied`
    naming ``what`` and ``hint``. Leaving the block (an error, Ctrl-C) ends the workers at once.
    ``fn`` and the items must be picklable."""

    def __init__(self, processes: int, what: str = "worker", hint: str = "", start_method: str = "spawn") -> None:
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        self.processes, self.what, self.hint = processes, what, hint
        self._executor = ProcessPoolExecutor(max_workers=processes, mp_context=mp.get_context(start_method))

    def __enter__(self) -> LoudPool:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close(terminate=kind is not None)

    def close(self, terminate: bool = False) -> None:
        """Shut the pool down; ``terminate`` ends workers busy with a task instead of waiting for them."""
        if terminate:  # the executor has no public way to end busy workers before Python 3.14
            for proc in list(getattr(self._executor, "_processes", {}).values()):
                proc.terminate()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _death(self) -> WorkerDied:
        """The error for a pool a dead worker broke, with its exit code where still known."""
        codes = [p.exitcode for p in getattr(self._executor, "_processes", {}).values() if p.exitcode]
        detail = _died(codes[0]) if codes else "it ended without a result"
        return WorkerDied(f"a {self.what} process died ({detail})" + (f"\n{self.hint}" if self.hint else ""))

    def _submit(self, fn: Callable[[Any], Any], items: Iterator[Any], count: int) -> list[Future]:
        """Start ``fn`` on the next ``count`` items."""
        try:
            return [self._executor.submit(fn, item) for item in islice(items, count)]
        except BrokenProcessPool:
            raise self._death() from None

    def _result(self, future: Future) -> Any:
        try:
            return future.result()
        except BrokenProcessPool:
            raise self._death() from None

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        """``fn(item)`` for each item, in order."""
        todo = iter(items)
        running = self._submit(fn, todo, 2 * self.processes)
        while running:
            result = self._result(running.pop(0))
            running += self._submit(fn, todo, 1)
            yield result

    def unordered(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        """``fn(item)`` for each item, in the order they finish."""
        todo = iter(items)
        running = set(self._submit(fn, todo, 2 * self.processes))
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                result = self._result(future)
                running |= set(self._submit(fn, todo, 1))
                yield result
