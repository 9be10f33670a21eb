"""Serving a policy over the network: wire format, micro-batching, backends, server and client.

``mode-policy serve RUN_OR_MODEL`` runs :class:`PolicyServer` (in Python:
``PolicyServer.from_path(RUN_OR_MODEL, backend="torch" | "onnx", threads=...)``); a robot talks to
it with :class:`PolicyClient` (``select_action`` / ``predict_action_chunk``). Requests are checked
against the policy's :class:`~mode_policy.observation.ObservationSchema`. See :mod:`.server` for
why websocket + msgpack.

The server and the client import websockets (the ``serve`` extra) when first used, so
:mod:`.export` and :mod:`.backends` work without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import PolicyClient, Reply
    from .server import PolicyServer, run_server

__all__ = ["PolicyClient", "PolicyServer", "Reply", "run_server"]


def __getattr__(name: str) -> Any:
    """:class:`PolicyClient`, :class:`Reply`, :class:`PolicyServer` and :func:`run_server`, imported on first use."""
    if name in ("PolicyClient", "Reply"):
        from . import client as module
    elif name in ("PolicyServer", "run_server"):
        from . import server as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value
    return value
