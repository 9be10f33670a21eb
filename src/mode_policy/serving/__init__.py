"""Serving a policy over the network: wire format, validation, micro-batching, server and client.

``mode-policy serve RUN_OR_MODEL`` runs :class:`PolicyServer`; a robot talks to it with
:class:`PolicyClient` (``select_action`` / ``predict_action_chunk``). See
:mod:`.server` for why websocket + msgpack.
"""

from .client import PolicyClient, Reply
from .server import PolicyServer, run_server

__all__ = ["PolicyClient", "PolicyServer", "Reply", "run_server"]
