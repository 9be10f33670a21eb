"""Micro-batching: requests that arrive together run as one ``predict_action_chunk``.

The first waiting request opens a short window (``window_s``); the batch closes
when the window ends, when every open connection has a request in it, or when it
holds ``max_rows`` rows. Requests whose observations can be stacked (same keys,
shapes, goal kind) run as one forward on the single model thread; a forward that
fails is retried request by request, so a bad request gets its own error and the
others their actions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from ..observation import Observation

log = logging.getLogger(__name__)

ForwardFn = Callable[[list[Observation]], np.ndarray]
"""Stacked observations -> actions (sum of rows, H, A), run on the model thread."""


@dataclass
class Timing:
    """Where a request's time went (ms), and how many rows its forward held."""

    queue_ms: float
    compute_ms: float
    batch_rows: int


@dataclass
class _Pending:
    obs: Observation
    future: asyncio.Future
    received: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Collects requests from all connections and runs them in batches on one thread."""

    def __init__(
        self,
        forward: ForwardFn,
        window_s: float,
        max_rows: int,
        open_connections: Callable[[], int],
        threads: int | None = None,
    ):
        """``threads``: torch threads of the model thread (None: torch's default). It must be set
        there: a new thread runs torch operations on the default thread count, whatever
        ``torch.set_num_threads`` was given in another thread (``torch.get_num_threads`` still
        reports that value)."""
        self.forward = forward
        self.window_s = window_s
        self.max_rows = max_rows
        self.open_connections = open_connections
        self.batches = 0
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="mode-policy-model",
            initializer=None if threads is None else torch.set_num_threads,
            initargs=() if threads is None else (threads,),
        )

    async def submit(self, obs: Observation) -> tuple[np.ndarray, Timing]:
        """Actions (B, H, A) of one request and its timing; raises what its forward raised."""
        pending = _Pending(obs, asyncio.get_running_loop().create_future())
        await self._queue.put(pending)
        return await pending.future

    async def run(self) -> None:
        """The batching loop (a task that runs until cancelled)."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                batch = [await self._queue.get()]
                deadline = loop.time() + self.window_s
                while sum(p.obs.rows for p in batch) < self.max_rows:
                    if not self._queue.empty():
                        batch.append(self._queue.get_nowait())
                        continue
                    remaining = deadline - loop.time()
                    if remaining <= 0 or len(batch) >= self.open_connections():
                        break
                    try:
                        batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                    except TimeoutError:
                        break
                groups: dict[tuple, list[_Pending]] = {}
                for pending in batch:
                    groups.setdefault(pending.obs.signature(), []).append(pending)
                for group in groups.values():
                    await self._run_group(group)
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run_group(self, group: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            actions = await loop.run_in_executor(self._executor, self.forward, [p.obs for p in group])
        except Exception as err:  # noqa: BLE001 - one bad request must not fail the others
            if len(group) > 1:
                for pending in group:
                    await self._run_group([pending])
                return
            if not isinstance(err, (ValueError, KeyError)):
                log.exception("forward failed")
            _resolve(group[0].future, exception=err)
            return
        compute_ms = (time.perf_counter() - start) * 1e3
        self.batches += 1
        rows = actions.shape[0]
        offset = 0
        for pending in group:
            n = pending.obs.rows
            timing = Timing((start - pending.received) * 1e3, compute_ms, rows)
            _resolve(pending.future, result=(actions[offset : offset + n], timing))
            offset += n


def _resolve(future: asyncio.Future, result=None, exception: BaseException | None = None) -> None:
    if future.done():  # the connection went away and its handler was cancelled
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)
