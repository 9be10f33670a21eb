"""Worker processes that fail loudly.

``multiprocessing.Pool`` replaces a worker that dies without raising (killed for memory, a
simulator that crashes) and then waits forever for the task it lost: the job hangs with no
message. :class:`WorkerGroup` runs one process per job (an evaluation's shards); a worker that
raises, or dies, ends the job at once with an error that says which and how, and the work
already saved (the evaluation's unit log) is kept, so running the same command again continues.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import WorkerDied

__all__ = ["WorkerGroup"]


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
