"""Executing action chunks while the next one is computed (real-time chunking, RTC).

A robot runs a control loop: one observation in, one action out, every tick. A chunking policy
plans H actions at a time; computing a chunk takes a few ticks. :class:`ChunkExecutor` does the
bookkeeping of one of three ways to live with that delay:

* ``"sync"``: when ``execute_horizon`` actions of the current chunk have run, the loop waits for
  the next chunk (the robot stands still while the policy thinks);
* ``"naive"``: it asks for the next chunk and keeps executing the current one; when the new chunk
  arrives ``k`` ticks later, it switches to the new chunk's action ``k`` (the new chunk was planned
  from the observation of the tick it was asked for, and ``k`` of its actions are already in the
  past);
* ``"rtc"``: as naive, but the request carries the actions the current chunk still plans
  (``prefix``) and how many of them will run before the new chunk arrives (``delay``, the largest
  delay measured over the last requests, in ticks): the new chunk is sampled to start with exactly
  those and to stay close to the rest (:mod:`mode_policy.model.guidance`), so the switch is smooth.

Where chunks come from is a :class:`ChunkSource`: :class:`PolicySource` runs a policy in a
background thread (in-process), :meth:`PolicyClient.realtime
<mode_policy.serving.client.PolicyClient.realtime>` talks to a ``mode-policy serve`` server,
and the delayed Meta-World evaluation (:mod:`mode_policy.evaluation.realtime`) simulates the
delay. The executor has no clock of its own: a tick is one :meth:`ChunkExecutor.step` call, and
delays are counted in ticks.

::

    executor = ChunkExecutor.for_policy(policy, mode="rtc")  # execute_horizon: the policy's n_action_steps
    while running:
        action = executor.step(observe())  # (B, A); a new chunk is computed in the background
        apply(action)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from ..constants import GOAL_KEY, TASK_KEY
from ..errors import ConfigError
from ..model.normalize import DATASET_KEY

__all__ = ["EXECUTION_MODES", "ChunkExecutor", "ChunkSource", "DelayEstimate", "PolicySource"]

EXECUTION_MODES = ("sync", "naive", "rtc")
"""How a chunk is switched for the next (see the module docstring)."""
NOT_STACKED = frozenset({GOAL_KEY, TASK_KEY, DATASET_KEY})
"""Observation keys that are not stacked into an observation history."""


class ChunkSource(Protocol):
    """Where an executor's chunks come from: one request at a time."""

    def submit(self, batch: Mapping[str, Any], prefix: Any | None, delay: int) -> None:
        """Start computing a chunk for ``batch`` (observation histories), guided toward ``prefix``
        (B, P, A) with ``delay`` frozen actions when given; returns at once."""
        ...

    def poll(self, elapsed: int) -> Any | None:
        """The chunk (B, H, A) if it is ready, else None (never blocks); ``elapsed``: ticks since
        it was submitted."""
        ...

    def wait(self) -> Any:
        """Block until the chunk is ready and return it."""
        ...


class DelayEstimate:
    """The delay the next request assumes, in ticks: the largest of the last ``window`` measured
    delays (RTC's conservative choice: a chunk that arrives earlier than assumed switches within
    its frozen actions, which equal the current chunk's), ``initial`` before any is measured."""

    def __init__(self, initial: int = 0, window: int = 10) -> None:
        if initial < 0 or window < 1:
            raise ConfigError(f"delay estimate: initial={initial} must be >= 0 and window={window} >= 1")
        self.initial = initial
        self.measured: deque[int] = deque(maxlen=window)

    def record(self, ticks: int) -> None:
        self.measured.append(int(ticks))

    @property
    def value(self) -> int:
        return max(self.measured) if self.measured else self.initial


@dataclass
class ExecutionStats:
    """What an executor did: the tick of every chunk switch (the tick whose action is the new
    chunk's first executed one; the first chunk of an episode is not a switch), the delays
    measured (ticks from request to switch), the delays the requests assumed, and the ticks the
    robot waited (``sync``, or a chunk that ran out before the next arrived)."""

    switches: list[int] = field(default_factory=list)
    delays: list[int] = field(default_factory=list)
    assumed: list[int] = field(default_factory=list)
    waits: int = 0


class ChunkExecutor:
    """Executes chunks from ``source`` one action per :meth:`step` (see the module docstring).

    ``horizon``: actions per chunk; ``execute_horizon``: actions of a chunk executed (counted from
    the tick its observation was taken) before the next chunk is requested, at most ``horizon``
    (and ``horizon - 1`` unless ``sync``: the current chunk must have actions left while the next
    is computed); ``mode``: 'sync', 'naive' or 'rtc'; ``delay``: the
    :class:`DelayEstimate` of RTC's requests (default: measured, starting at 0);
    ``n_obs_steps``: observation frames per request (the executor keeps the history).
    """

    def __init__(
        self,
        source: ChunkSource,
        horizon: int,
        execute_horizon: int,
        mode: str = "rtc",
        delay: DelayEstimate | None = None,
        n_obs_steps: int = 1,
    ) -> None:
        if mode not in EXECUTION_MODES:
            raise ConfigError(f"execution mode {mode!r}: choose from {', '.join(EXECUTION_MODES)}")
        top = horizon if mode == "sync" else horizon - 1
        if not 1 <= execute_horizon <= top:
            raise ConfigError(
                f"execute_horizon={execute_horizon} must be in [1, {top}] for {mode} execution of "
                f"{horizon}-action chunks"
            )
        self.source, self.horizon, self.execute_horizon, self.mode = source, horizon, execute_horizon, mode
        self.delay = delay or DelayEstimate()
        self.n_obs_steps = n_obs_steps
        self.stats = ExecutionStats()
        self.reset()

    @classmethod
    def for_policy(
        cls,
        policy: Any,
        mode: str = "rtc",
        execute_horizon: int = 0,
        delay: DelayEstimate | None = None,
        **predict_kwargs: Any,
    ) -> ChunkExecutor:
        """An executor of ``policy`` (a MoDE policy, or anything with its ``predict_action_chunk``
        and ``config``) computing chunks in a background thread (:class:`PolicySource`);
        ``execute_horizon`` 0: the policy's ``n_action_steps``; ``predict_kwargs`` go with every
        call (``sampling=``, ``guidance=``, ``dataset=``)."""
        cfg = policy.config
        return cls(
            PolicySource(policy, **predict_kwargs),
            cfg.horizon,
            execute_horizon or cfg.n_action_steps,
            mode,
            delay,
            cfg.n_obs_steps,
        )

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Start an episode: no chunk, no history (a request in flight is dropped); the delay
        estimate and the stats are kept (:attr:`stats` is replaced by ``ExecutionStats()`` to clear it)."""
        if getattr(self, "pending", False):
            self.source.wait()  # a source answers its requests in order: drain it
        self.chunk: Any = None
        self.index = 0  # the next action of the current chunk
        self.tick = 0  # ticks of this episode so far
        self.pending = False
        self.requested_at = 0
        self.history: deque[Mapping[str, Any]] = deque(maxlen=self.n_obs_steps)

    def step(self, observation: Mapping[str, Any]) -> Any:
        """The action (B, A) to execute now, for this tick's observation frame (arrays with a
        leading batch dimension; ``goal`` or ``task``); requests and switches chunks as the mode says."""
        if not self.history:
            self.history.extend([observation] * self.n_obs_steps)
        else:
            self.history.append(observation)
        if self.chunk is None:  # the episode's first chunk: nothing to execute meanwhile
            self._request(with_prefix=False)
            self._take(self.source.wait(), switch=False)
        if self.pending:
            self._take_when_ready()
        if not self.pending and self.index >= self.execute_horizon:
            self._request(with_prefix=self.mode == "rtc")
            if self.mode == "sync":
                self._take(self.source.wait())
            else:
                self._take_when_ready()  # a source may answer at once (a simulated delay of 0)
        action = self.chunk[:, self.index]
        self.index += 1
        self.tick += 1
        return action

    # ---------------------------------------------------------------- helpers
    def _observation_batch(self) -> dict[str, Any]:
        frame = dict(self.history[-1])
        if self.n_obs_steps > 1:
            for key in (k for k in frame if k not in NOT_STACKED):
                frames = [f[key] for f in self.history]
                stack = torch.stack if torch.is_tensor(frames[0]) else np.stack
                frame[key] = stack(frames, 1)  # (B, n_obs, ...)
        return frame

    def _request(self, with_prefix: bool) -> None:
        prefix, delay = None, 0
        if with_prefix:
            prefix = self.chunk[:, self.index :]  # what the current chunk plans from this tick on
            delay = min(self.delay.value, prefix.shape[1])
            self.stats.assumed.append(delay)
        self.source.submit(self._observation_batch(), prefix, delay)
        self.pending, self.requested_at = True, self.tick

    def _take_when_ready(self) -> None:
        elapsed = self.tick - self.requested_at
        chunk = self.source.poll(elapsed)
        if chunk is None and self.index >= self.horizon:  # the current chunk ran out: wait
            chunk = self.source.wait()
            self.stats.waits += 1
        if chunk is not None:
            self._take(chunk)

    def _take(self, chunk: Any, switch: bool = True) -> None:
        """Switch to ``chunk``, at the action for this tick (the ticks since it was requested)."""
        elapsed = self.tick - self.requested_at
        self.pending = False
        self.chunk, self.index = chunk, min(elapsed, chunk.shape[1] - 1)
        if not switch:
            return
        self.stats.switches.append(self.tick)
        if self.mode == "sync":
            self.stats.waits += 1
        else:
            self.stats.delays.append(elapsed)
            self.delay.record(elapsed)


class PolicySource:
    """Chunks from ``policy.predict_action_chunk`` computed in a background thread (one at a time);
    ``predict_kwargs`` go with every call (``sampling=``, ``guidance=``, ``dataset=``)."""

    def __init__(self, policy: Any, **predict_kwargs: Any) -> None:
        self.policy, self.kwargs = policy, predict_kwargs
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mode-policy-realtime")
        self._future: Future | None = None

    def submit(self, batch: Mapping[str, Any], prefix: Any | None, delay: int) -> None:
        guided = {} if prefix is None else {"prefix": prefix, "delay": delay}
        self._future = self._pool.submit(self.policy.predict_action_chunk, batch, **self.kwargs, **guided)

    def poll(self, elapsed: int) -> Any | None:
        return self._future.result() if self._future is not None and self._future.done() else None

    def wait(self) -> Any:
        return self._future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
