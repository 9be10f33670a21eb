"""PolicyClient: talk to a ``mode-policy serve`` server from a robot's control loop.

Synchronous (one request, one reply), like the policy it stands in for:
``predict_action_chunk(obs)`` returns the chunk (B, H, A) as a numpy array;
``select_action(obs)`` returns one action (B, A) and asks the server for a new
chunk only when its own queue of ``n_action_steps`` actions is empty (the
queue and the observation history live here, on the client side).

Asynchronous (real-time chunking): ``realtime(mode="rtc")`` returns a
:class:`~mode_policy.serving.realtime.ChunkExecutor` whose ``step(obs)`` returns one action per control
tick while the next chunk's request is in flight (``submit`` / ``poll`` / ``wait``, one request
at a time on the connection), sends the actions that run meanwhile as the request's ``prefix``
with the measured ``delay``, and switches chunks at the right tick.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
from websockets.sync.client import connect

from ..constants import GOAL_KEY, TASK_KEY
from ..errors import DataError
from .protocol import MAX_MESSAGE_BYTES, PROTOCOL_VERSION, pack, unpack
from .realtime import ChunkExecutor, DelayEstimate


@dataclass
class Reply:
    """One prediction: the actions and where the time went (ms)."""

    actions: np.ndarray  # (B, H, A) float32, original units
    latency_ms: dict[str, float]  # server, queue, compute (from the server) and round_trip (measured here)
    batch_size: int  # rows of the server-side forward this request ran in


def _wire_value(value: Any) -> Any:
    """Tensors become numpy arrays; strings, lists of strings and arrays pass through."""
    if hasattr(value, "detach"):  # a torch tensor
        return value.detach().cpu().numpy()
    return value


class PolicyClient:
    """A connection to a policy server at ``ws://host:port`` (or ``uri``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8000, timeout: float = 30.0, uri: str | None = None):
        self.uri = uri or f"ws://{host}:{port}"
        self.timeout = timeout
        self._stack = ExitStack()  # connect() is a context manager (websockets >= 16 warns otherwise)
        self._ws = self._stack.enter_context(
            connect(self.uri, open_timeout=timeout, max_size=MAX_MESSAGE_BYTES, compression=None, proxy=None)
        )
        self.metadata = unpack(self._ws.recv(timeout=timeout))
        if self.metadata.get("protocol") != PROTOCOL_VERSION:
            self.close()
            raise DataError(
                f"{self.uri} speaks protocol {self.metadata.get('protocol')}, this client {PROTOCOL_VERSION}"
            )
        policy = self.metadata["policy"]
        self.n_action_steps = int(policy["n_action_steps"])
        self.n_obs_steps = int(policy["n_obs_steps"])
        self._next_id = 0
        self._actions: deque[np.ndarray] = deque()
        self._history: deque[dict[str, Any]] = deque(maxlen=self.n_obs_steps)
        self._in_flight: float | None = None  # when the request in flight was sent (submit)
        self.last_reply: Reply | None = None
        """The latest reply of :meth:`predict` or of a submitted request."""

    # ---------------------------------------------------------- requests
    def _send(self, message: dict[str, Any]) -> None:
        if self._in_flight is not None:
            raise DataError("a submitted request is in flight: poll() or wait() for it first")
        self._next_id += 1
        self._ws.send(pack({**message, "id": self._next_id}))

    def _check(self, data: bytes | str) -> dict[str, Any]:
        reply = unpack(data)
        if not reply.get("ok"):
            raise DataError(f"policy server: {reply.get('error', 'request failed')}")
        if reply.get("id") != self._next_id:
            raise DataError(f"policy server answered request {reply.get('id')}, expected {self._next_id}")
        return reply

    def _call(self, message: dict[str, Any]) -> dict[str, Any]:
        self._send(message)
        return self._check(self._ws.recv(timeout=self.timeout))

    @staticmethod
    def _predict_message(obs: Mapping[str, Any], prefix: Any = None, delay: Any = 0) -> dict[str, Any]:
        message = {"type": "predict", "obs": {k: _wire_value(v) for k, v in obs.items()}}
        if prefix is not None:
            message["prefix"] = np.asarray(_wire_value(prefix), dtype=np.float32)
            message["delay"] = np.asarray(_wire_value(delay)).tolist()  # an int, or one per row
        return message

    def _reply(self, reply: dict[str, Any], start: float) -> Reply:
        latency = {**reply["latency_ms"], "round_trip": (time.perf_counter() - start) * 1e3}
        self.last_reply = Reply(reply["actions"], latency, int(reply["batch_size"]))
        return self.last_reply

    def health(self) -> dict[str, Any]:
        """The server's counters (requests, errors, batches, connections, uptime)."""
        return self._call({"type": "health"})

    def predict(self, obs: Mapping[str, Any], prefix: Any = None, delay: Any = 0) -> Reply:
        """One chunk for ``obs`` (arrays with a leading batch dimension, ``goal`` or ``task``),
        with its latency; DataError with the server's message if it refused ``obs``. ``prefix``
        (B, P, A) and ``delay``: a real-time chunking request (as ``MoDEPolicy.predict_action_chunk``)."""
        start = time.perf_counter()
        return self._reply(self._call(self._predict_message(obs, prefix, delay)), start)

    def predict_action_chunk(self, obs: Mapping[str, Any], prefix: Any = None, delay: Any = 0) -> np.ndarray:
        """The action chunk (B, H, A) in the original action units."""
        return self.predict(obs, prefix, delay).actions

    # ------------------------------------------------- requests in flight
    def submit(self, obs: Mapping[str, Any], prefix: Any = None, delay: Any = 0) -> None:
        """Send a predict request and return at once (one in flight at a time); :meth:`poll` or
        :meth:`wait` takes its chunk."""
        self._send(self._predict_message(obs, prefix, delay))
        self._in_flight = time.perf_counter()

    def poll(self, elapsed: int = 0) -> np.ndarray | None:
        """The submitted request's chunk (B, H, A) if its reply is here, else None (never blocks)."""
        if self._in_flight is None:
            raise DataError("poll(): no request in flight (submit() one first)")
        try:
            data = self._ws.recv(timeout=0)
        except TimeoutError:
            return None
        return self._received(data)

    def wait(self) -> np.ndarray:
        """Block until the submitted request's chunk (B, H, A) is here (DataError after ``timeout``)."""
        if self._in_flight is None:
            raise DataError("wait(): no request in flight (submit() one first)")
        try:
            data = self._ws.recv(timeout=self.timeout)
        except TimeoutError:
            raise DataError(f"policy server: no reply within {self.timeout} s") from None
        return self._received(data)

    def _received(self, data: bytes | str) -> np.ndarray:
        start, self._in_flight = self._in_flight, None
        return self._reply(self._check(data), start).actions

    def realtime(
        self, mode: str = "rtc", execute_horizon: int = 0, delay: DelayEstimate | None = None
    ) -> ChunkExecutor:
        """A :class:`~mode_policy.serving.realtime.ChunkExecutor` on this connection: ``step(obs)`` gives
        one action per control tick while the next chunk is computed on the server ('sync',
        'naive' or 'rtc' execution; ``execute_horizon`` 0: the policy's ``n_action_steps``)."""
        if mode == "rtc" and not (self.metadata.get("realtime") or {}).get("prefix"):
            raise DataError(f"{self.uri} does not take prefixes (an older server): use mode='naive' or update it")
        policy = self.metadata["policy"]
        horizon = int(policy["horizon"])
        return ChunkExecutor(self, horizon, execute_horizon or self.n_action_steps, mode, delay, self.n_obs_steps)

    def select_action(self, obs: Mapping[str, Any]) -> np.ndarray:
        """One action (B, A) from one observation frame (state (B, S), images (B, H, W, 3));
        re-plans a chunk when the client-side queue is empty."""
        frame = {k: _wire_value(v) for k, v in obs.items()}
        if not self._history:
            self._history.extend([frame] * self.n_obs_steps)
        else:
            self._history.append(frame)
        if not self._actions:
            batch = dict(frame)
            if self.n_obs_steps > 1:  # stack the history of every observed array: (B, n_obs, ...)
                for key in (k for k in frame if k not in (GOAL_KEY, TASK_KEY)):
                    batch[key] = np.stack([f[key] for f in self._history], axis=1)
            chunk = self.predict_action_chunk(batch)  # (B, H, A)
            self._actions.extend(np.moveaxis(chunk[:, : self.n_action_steps], 1, 0))
        return self._actions.popleft()

    def reset(self) -> None:
        """Forget queued actions and the observation history (call at episode start)."""
        self._actions.clear()
        self._history.clear()

    # ------------------------------------------------------------ closing
    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
