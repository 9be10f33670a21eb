"""Fixtures: the tiny served policy, and servers of it started per test."""

from __future__ import annotations

import pytest
import torch
from served import RunningServer, make_policy

from mode_policy import MoDEPolicy
from mode_policy.serving import PolicyServer


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """Put torch's thread count back (PolicyServer.from_path sets this thread's to 1)."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def policy() -> MoDEPolicy:
    return make_policy()


@pytest.fixture
def serve(policy):
    """serve(**PolicyServer options) -> a RunningServer of ``policy``, stopped after the test."""
    running: list[RunningServer] = []

    def start(**options) -> RunningServer:
        running.append(RunningServer(PolicyServer(policy, host="127.0.0.1", port=0, **options)))
        return running[-1]

    yield start
    for server in running:
        if server.thread.is_alive():
            server.stop()
