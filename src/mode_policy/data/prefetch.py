"""Training batches built ahead of the step that needs them, on a background thread.

:class:`BatchStream` hands out a fixed number of batches, in order, each moved to the training
device. With ``depth`` > 0 a producer thread builds up to ``depth`` batches ahead into a bounded
queue while the main thread runs the current step; with ``depth`` 0 each batch is built inline
when asked for (the same batches: the stream is one generator's, whoever draws it).

Why one thread and not ``DataLoader`` workers: a batch is a handful of vectorised gathers over
tensors already in memory (:class:`~mode_policy.data.windows.WindowSampler`), or ``preadv``
reads from the frame cache (:class:`~mode_policy.data.frame_cache.DiskFrames`); both release
the GIL, so one thread builds batches far faster than a GPU step consumes them (``mode-policy
bench data``). And the batches come from *one* random generator and one deterministic weight
schedule (:class:`~mode_policy.data.mixture.MixtureSampler`), drawn in order: a thread draws
exactly the inline stream, bit for bit, and the state to resume from stays in this process.
Worker processes would each need their own generator (another stream), a copy or a shared map of
the data, and bookkeeping to restore the order and the resume point.

On CUDA the producer copies each batch into pinned (page-locked) memory, so the main thread's
``.to(device, non_blocking=True)`` is an asynchronous DMA. Camera frames stay uint8 (B, n_obs,
H, W, 3) all the way to the device, a quarter of float32's bytes; the image encoder converts and
normalises them there.

Resuming exactly: every batch is queued with the stream's position *after* it (the generator's
state and the sampler's; whatever ``position()`` returns). :attr:`BatchStream.position` is that of
the last batch handed out, which is what a checkpoint must save; closing the stream stops the
producer and rewinds the generator to it, so batches built ahead but never trained on are drawn
again later, not skipped.

Errors: an exception raised while building a batch takes that batch's place in the queue and is
raised again, the same exception object with its traceback through the producer, in the main
thread when it asks for that batch (where the inline path would have raised it). Leaving the
stream (``with``, or :meth:`BatchStream.close`) always joins the thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import torch

P = TypeVar("P")
Batch = dict[str, Any]

THREAD_NAME = "mode-policy-prefetch"
"""Name of the producer thread (tests look for strays by it)."""
_POLL_S = 0.1  # how often a blocked producer or consumer looks whether the other side is gone


def pin_batch(batch: Batch) -> Batch:
    """The batch with its CPU tensors copied to pinned memory (other values unchanged)."""
    return {k: v.pin_memory() if torch.is_tensor(v) and v.device.type == "cpu" else v for k, v in batch.items()}


def batch_to(batch: Batch, device: torch.device) -> Batch:
    """The batch's tensors on ``device`` (asynchronous from pinned memory); dtypes unchanged, so
    uint8 camera frames travel as uint8."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class BatchStream(Generic[P]):
    """``count`` batches of ``build()``, in order, on ``device`` (see the module docstring).

    ``position()`` reads the state that determines the next batch (e.g. the generator's), and
    ``rewind(p)`` restores one; ``depth`` is the queue's size (0: no thread, build inline).
    Iterate it, or call :meth:`next`; use it as a context manager so the thread is always joined.
    """

    def __init__(
        self,
        build: Callable[[], Batch],
        count: int,
        *,
        position: Callable[[], P],
        rewind: Callable[[P], None],
        depth: int = 2,
        device: torch.device | str = "cpu",
    ) -> None:
        if depth < 0 or count < 0:
            raise ValueError(f"depth={depth} and count={count} must be >= 0")
        self.count, self.depth, self.device = count, depth, torch.device(device)
        self._build, self._position, self._rewind = build, position, rewind
        self._pos: P = position()
        self._handed = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        if depth > 0 and count > 0:
            self._thread = threading.Thread(target=self._produce, name=THREAD_NAME, daemon=True)
            self._thread.start()

    @property
    def position(self) -> P:
        """The stream's position after the batches handed out so far (what a checkpoint saves)."""
        return self._pos

    @property
    def prefetching(self) -> bool:
        """Whether a producer thread is running."""
        return self._thread is not None

    # ------------------------------------------------------------ producer side
    def _produce(self) -> None:
        try:
            pin = self.device.type == "cuda"
            for _ in range(self.count):
                if self._stop.is_set():
                    return
                batch = self._build()
                if not self._put(("batch", pin_batch(batch) if pin else batch, self._position())):
                    return
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(("error", err, None))

    def _put(self, item: tuple) -> bool:
        """Queue ``item`` unless the stream is closed meanwhile (then False)."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    # ------------------------------------------------------------ consumer side
    def _get(self) -> tuple:
        while True:
            try:
                return self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("the batch prefetch thread ended without handing over a batch") from None

    def next(self) -> Batch:
        """The next batch, on the device; the producer's exception where building it failed."""
        if self._handed >= self.count:
            raise StopIteration
        if self._thread is None:
            batch = self._build()
            self._pos = self._position()
        else:
            kind, payload, pos = self._get()
            if kind == "error":
                self.close()
                raise payload
            batch, self._pos = payload, pos
        self._handed += 1
        return batch_to(batch, self.device)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        return self.next()

    def close(self) -> None:
        """Stop and join the producer, then rewind to :attr:`position` (idempotent)."""
        if self._thread is None:
            return
        self._stop.set()
        while self._thread.is_alive():  # a producer blocked on a full queue wakes within _POLL_S
            self._drain()
            self._thread.join(timeout=_POLL_S)
        self._drain()
        self._thread = None
        self._rewind(self._pos)

    def _drain(self) -> None:
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass

    def __enter__(self) -> BatchStream[P]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
