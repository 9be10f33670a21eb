"""The policy server (``mode-policy serve``): a MoDE policy behind a websocket.

Why websocket + msgpack (as openpi does) and not gRPC (as LeRobot's async
inference does): a robot sends one observation and waits for one chunk, so
the call is a plain request/reply on one long-lived connection; websockets
keep that connection open with one small frame per message and no code
generation, msgpack carries numpy arrays as raw bytes (no pickle, no
protobuf schema to keep in step with the policy's features), and both
packages are pure Python wheels. gRPC would add protobuf definitions,
generated stubs and a C++ runtime for the same request/reply.

Behaviour:

* one message in, one reply out, per connection, in order; replies carry the
  request's ``id`` and ``latency_ms`` (server total, queueing, forward);
* observations are checked against the policy's
  :class:`~mode_policy.observation.ObservationSchema` (the rules of the policy's own
  ``check_inputs``): a bad one gets an error reply naming the problem, and
  the connection and the server carry on;
* requests from different connections that arrive together run as one
  forward (:mod:`.batcher`); the server keeps no per-client action queue:
  :class:`~mode_policy.serving.client.PolicyClient` queues a chunk's actions on
  the client side, so a robot pays a round trip once per chunk;
* ``GET /healthz`` (plain HTTP) and a ``health`` message report the counters;
* SIGINT / SIGTERM stop accepting, answer the requests in flight, close the
  connections (code 1001) and return;
* ``backend="onnx"`` (``mode-policy serve --backend onnx``): a forward of one row, the robot's
  usual case, runs the policy's cached sampler exported for batch 1 in ONNX Runtime, the fastest
  CPU path; larger forwards run on the policy (:mod:`.backends`).

:meth:`PolicyServer.from_path` builds the server ``mode-policy serve`` runs (loading, thread
rules, backend) in one call.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import signal
import socket
import time
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np
import torch
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from ..constants import TASK_KEY
from ..dataset_view import DatasetPolicy, for_dataset
from ..errors import ConfigError, ModePolicyError
from ..observation import Observation, ObservationSchema
from ..policy import MoDEPolicy
from ..threads import ThreadGovernor, choose_threads, make_governor
from . import backends
from .backends import Progress, TorchBackend, make_backend
from .batcher import MicroBatcher
from .protocol import MAX_MESSAGE_BYTES, PROTOCOL_VERSION, error_reply, pack, unpack

log = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"


class PolicyServer:
    """Serves ``policy`` (put in eval mode) on ``host:port`` (0 = an ephemeral port). A policy
    trained on a mixture is served through one dataset's view (:func:`~mode_policy.dataset_view.for_dataset`):
    its normalisation, state and action widths. :meth:`from_path` builds the server
    ``mode-policy serve`` runs."""

    def __init__(
        self,
        policy: MoDEPolicy | DatasetPolicy,
        host: str = "127.0.0.1",
        port: int = 8000,
        batch_window_ms: float = 2.0,
        max_batch: int = 64,
        drain_timeout_s: float = 10.0,
        backend: str | TorchBackend = "torch",
        threads: int | None = None,
        governor: ThreadGovernor | None = None,
    ) -> None:
        """``backend``: 'torch', 'onnx' (exports the policy's cached sampler now, see
        :mod:`.backends`) or a backend object; ``threads``: torch threads of the forwards (default:
        this thread's count now, e.g. what :func:`~mode_policy.threads.apply_threads` chose);
        ``governor``: follows neighbours that start or stop while serving
        (:class:`~mode_policy.threads.ThreadGovernor`, stepped after each forward; it should apply
        a new count with the backend's ``set_threads``).

        The forwards run on a thread of their own. Where this process's main thread has already run
        torch on more than one thread, multi-threaded forwards there are several times slower (two
        OpenMP teams): keep the main thread on one (``torch.set_num_threads(1)`` before any torch
        work), as :meth:`from_path` does."""
        check_options(max_batch, batch_window_ms)
        check_port(port)
        if isinstance(policy, MoDEPolicy):
            policy = for_dataset(policy)  # a mixture: its only dataset, or ConfigError naming them
        self.policy = policy.eval()
        self.threads = torch.get_num_threads() if threads is None else threads
        self.backend = make_backend(backend, self.policy, self.threads) if isinstance(backend, str) else backend
        self.governor = governor
        self.schema = ObservationSchema.for_policy(self.policy)
        self.host, self.port = host, port
        self.drain_timeout_s = drain_timeout_s
        self.device = next(self.policy.parameters()).device
        self.max_rows = max_batch
        self.batcher: MicroBatcher | None = None
        self.window_s = batch_window_ms / 1e3
        self.connections = 0
        self.in_flight = 0
        self.closing = False
        self.started = time.time()
        self.counts = {"requests": 0, "errors": 0}

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        backend: str = "torch",
        threads: int = 0,
        device: str = "cpu",
        dataset: str = "",
        host: str = "127.0.0.1",
        port: int = 8000,
        batch_window_ms: float = 2.0,
        max_batch: int = 64,
        drain_timeout_s: float = 10.0,
        progress: Progress | None = None,
    ) -> PolicyServer:
        """The server ``mode-policy serve`` runs, for the policy saved in ``path`` (a run directory or
        a saved model directory), on ``device``, for ``dataset`` of a mixture policy.

        ``threads``: torch threads of the forwards (0: ``OMP_NUM_THREADS``'s count when set, else the
        cores other processes leave free, and on the CPU a thread governor then follows neighbours
        that start or stop later). ``backend``: 'torch', or 'onnx' (one-row forwards on the cached
        sampler exported now, for batch 1, in ONNX Runtime; CPU only). ``progress`` is told before
        the export. This thread only loads (and exports): it is put on one torch thread first, so
        the forwards, on the server's model thread, run at full speed (see :meth:`__init__`)."""
        chosen = choose_threads(threads)  # before this thread's count drops to 1 (OMP_NUM_THREADS reads it)
        # Once this thread has run a parallel region on two threads, two-thread forwards on the model
        # thread take ~4x as long (measured: 50 ms against 12 ms a cpu-preset chunk), their OpenMP
        # team beside this thread's.
        torch.set_num_threads(1)
        check_options(max_batch, batch_window_ms)
        if backend not in backends.BACKENDS:
            raise ConfigError(f"backend={backend!r}: expected 'torch' or 'onnx'")
        check_address(host, port)  # before loading: a port in use is said at once
        served = for_dataset(backends.load_policy(path, device), dataset)  # ConfigError naming the datasets
        engine = make_backend(backend, served, chosen, progress)
        governor = None
        if torch.device(device).type == "cpu":
            governor = make_governor(threads, chosen, set_threads=engine.set_threads)
        return cls(served, host, port, batch_window_ms, max_batch, drain_timeout_s, engine, chosen, governor)

    # ------------------------------------------------------------ state
    def metadata(self) -> dict[str, Any]:
        cfg = self.policy.config
        return {
            "type": "metadata",
            "protocol": PROTOCOL_VERSION,
            "policy": cfg.to_dict(),
            "features": {**self.schema.features(), "actions": [cfg.horizon, cfg.action_dim]},
            "dataset": getattr(self.policy, "dataset", None),
            "max_batch": self.max_rows,
            "backend": self.backend.name,
            "realtime": {"prefix": True},  # predict requests may carry 'prefix' and 'delay' (RTC)
        }

    @property
    def known_tasks(self) -> frozenset[str] | None:
        """The instructions the policy knows (None: any string)."""
        return self.schema.known_tasks

    def health(self) -> dict[str, Any]:
        threads = self.threads if self.governor is None else self.governor.threads
        return {
            "type": "health",
            "ok": not self.closing,
            "uptime_s": time.time() - self.started,
            "connections": self.connections,
            "in_flight": self.in_flight,
            "torch_threads": threads,
            "batches": self.batcher.batches if self.batcher else 0,
            **self.counts,
        }

    # ---------------------------------------------------------- forward
    def forward(self, group: list[Observation]) -> np.ndarray:
        """Stacked observations -> actions (rows, H, A) float32 (runs on the model thread)."""
        actions = self._forward(group)
        if self.governor is not None and self.governor.step() is not None:
            log.info("torch threads now %d (other processes use %.1f cores)", *self.governor.changes[-1][1:])
        return actions

    @torch.inference_mode()
    def _forward(self, group: list[Observation]) -> np.ndarray:
        batch: dict[str, Any] = {
            key: torch.from_numpy(np.concatenate([o.arrays[key] for o in group])).to(self.device)
            for key in group[0].arrays
        }
        if group[0].tasks is not None:
            batch[TASK_KEY] = [t for o in group for t in o.tasks]
        if group[0].prefix is not None:  # real-time chunking: stacked like the arrays (equal signatures)
            prefix = torch.from_numpy(np.concatenate([o.prefix for o in group])).to(self.device)
            delay = np.concatenate([o.delay for o in group])
            return self.backend.predict(batch, sum(o.rows for o in group), prefix=prefix, delay=delay)
        return self.backend.predict(batch, sum(o.rows for o in group))

    # --------------------------------------------------------- messages
    async def reply(self, data: bytes | str) -> dict[str, Any]:
        """The reply to one incoming message (never raises for what the client sent)."""
        received = time.perf_counter()
        request_id = None
        try:
            message = unpack(data)
            request_id = message.get("id")
            kind = message.get("type")
            if kind == "health":
                return {**self.health(), "id": request_id}
            if kind != "predict":
                return error_reply(request_id, f"unknown message type {kind!r} (expected 'predict' or 'health')")
            if self.closing:
                return error_reply(request_id, "server is shutting down")
            obs = self.schema.check_request(
                message.get("obs"), self.max_rows, message.get("prefix"), message.get("delay", 0)
            )
            actions, timing = await self.batcher.submit(obs)
        except ModePolicyError as err:
            return error_reply(request_id, str(err))
        except KeyError as err:  # e.g. a goal encoder that does not know an instruction
            return error_reply(request_id, f"unknown key {err}")
        except Exception as err:  # noqa: BLE001 - a bug answers this request; the server keeps serving
            log.exception("request failed")
            return error_reply(request_id, f"internal error: {type(err).__name__}: {err}")
        return {
            "type": "result",
            "id": request_id,
            "ok": True,
            "actions": actions,
            "batch_size": timing.batch_rows,
            "latency_ms": {
                "server": (time.perf_counter() - received) * 1e3,
                "queue": timing.queue_ms,
                "compute": timing.compute_ms,
            },
        }

    async def _handle(self, ws: ServerConnection) -> None:
        self.connections += 1
        try:
            await ws.send(pack(self.metadata()))
            async for data in ws:
                self.in_flight += 1
                try:
                    reply = await self.reply(data)
                    self.counts["requests"] += 1
                    self.counts["errors"] += not reply["ok"]
                    await ws.send(pack(reply))
                finally:
                    self.in_flight -= 1
        except ConnectionClosed:
            pass  # a client that went away, even mid-request, costs only its own reply
        finally:
            self.connections -= 1

    def _http(self, connection: ServerConnection, request) -> Any:
        if request.path == HEALTH_PATH:
            return connection.respond(HTTPStatus.OK, json.dumps(self.health()) + "\n")
        return None  # go on with the websocket handshake

    # ------------------------------------------------------------ serve
    async def serve(self, stop: asyncio.Event, ready: Callable[[int], None] | None = None) -> None:
        """Serve until ``stop`` is set, then shut down gracefully; ``ready(port)`` once listening."""
        self.batcher = MicroBatcher(
            self.forward, self.window_s, self.max_rows, lambda: self.connections, threads=self.threads
        )
        batching = asyncio.create_task(self.batcher.run())
        listening = False
        try:
            async with serve(
                self._handle,
                self.host,
                self.port,
                process_request=self._http,
                max_size=MAX_MESSAGE_BYTES,
                compression=None,
            ) as server:
                listening = True
                self.port = server.sockets[0].getsockname()[1]
                if ready is not None:
                    ready(self.port)
                await stop.wait()
                self.closing = True  # new predictions are refused from here on
                deadline = time.monotonic() + self.drain_timeout_s
                while self.in_flight and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                server.close()  # stop listening, close every connection with 1001 (going away)
                await server.wait_closed()
        except OSError as err:
            if listening:
                raise
            raise ConfigError(address_problem(self.host, self.port, err)) from None
        finally:
            batching.cancel()
            await asyncio.gather(batching, return_exceptions=True)


def check_port(port: int) -> None:
    """ConfigError for a port that is not one (0: an ephemeral port)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"port={port!r}: must be in [0, 65535] (0: a free port, printed at start)")


def address_problem(host: str, port: int, err: OSError) -> str:
    """One line for a failure to listen on ``host:port``."""
    if isinstance(err, socket.gaierror):
        return f"host={host!r}: no such address ({err.strerror}); use 127.0.0.1, 0.0.0.0 or this machine's name"
    if err.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is in use (another server?): choose another --port, or 0 for a free one"
    if err.errno == errno.EADDRNOTAVAIL:
        return f"host={host!r} is not an address of this machine: use 127.0.0.1, 0.0.0.0 or one of its interfaces"
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"port {port} on {host} needs privileges this user lacks (ports below 1024): choose a port >= 1024"
    return f"cannot listen on {host}:{port}: {err.strerror or err}"


def check_address(host: str, port: int) -> None:
    """ConfigError unless this machine can listen on ``host:port`` now: a port in range, a host
    that resolves to an address of this machine, a port no other server holds. Each address is
    bound for a moment, as the server will bind it (address reuse on, IPv6 sockets IPv6-only)."""
    check_port(port)
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as err:
        if isinstance(err, UnicodeError):
            raise ConfigError(f"host={host!r}: not a host name or address") from None
        raise ConfigError(address_problem(host, port, err)) from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as err:
                raise ConfigError(address_problem(host, port, err)) from None


def check_options(max_batch: int, batch_window_ms: float) -> None:
    """ConfigError for a batch size below 1 or a negative batch window."""
    if max_batch < 1 or batch_window_ms < 0:
        raise ConfigError(f"max_batch={max_batch} must be >= 1 and batch_window_ms={batch_window_ms} >= 0")


def run_server(server: PolicyServer, ready: Callable[[int], None] | None = None) -> None:
    """Serve in this thread until SIGINT or SIGTERM, then shut down gracefully."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await server.serve(stop, ready)

    asyncio.run(main())
