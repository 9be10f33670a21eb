"""Real-time chunking through the server: requests with a prefix and a delay, their errors, requests
in flight on the client, and the client's chunk executor against a served policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from served import TASKS

from mode_policy.errors import DataError
from mode_policy.serving import PolicyClient
from mode_policy.serving.backends import OnnxBackend


def obs(rows: int = 1, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"observation.state": rng.normal(size=(rows, 39)).astype(np.float32), "task": [TASKS[0]] * rows}


def prefix(rows: int = 2, length: int = 3, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    low, high = np.array([-2.0, -1.0, 0.0, 5.0]), np.array([2.0, 1.0, 1.0, 6.0])
    return (low + (high - low) * rng.random((rows, length, 4))).astype(np.float32)


def test_a_guided_request_starts_with_its_prefix(serve, policy):
    server = serve()
    given = prefix()
    with PolicyClient(port=server.port) as client:
        assert client.metadata["realtime"] == {"prefix": True}
        torch.manual_seed(7)
        reply = client.predict(obs(2), prefix=given, delay=[1, 2])
        plain = client.predict(obs(2))  # a request without a prefix, as before
    np.testing.assert_array_equal(reply.actions[0, :1], given[0, :1])
    np.testing.assert_array_equal(reply.actions[1, :2], given[1, :2])
    torch.manual_seed(7)
    batch = obs(2)
    expected = policy.predict_action_chunk(
        {**batch, "observation.state": torch.from_numpy(batch["observation.state"])},
        prefix=torch.from_numpy(given),
        delay=[1, 2],
    )
    np.testing.assert_allclose(reply.actions, expected.numpy(), atol=1e-6)
    assert plain.actions.shape == (2, 4, 4)


def test_bad_prefixes_get_errors_and_the_connection_goes_on(serve):
    server = serve()
    with PolicyClient(port=server.port) as client:
        for message, error in [
            ({"prefix": prefix(2), "delay": 1}, "prefix has shape"),  # two rows for a one-row request
            ({"prefix": prefix(1, 5), "delay": 1}, "1 <= P <= horizon=4"),
            ({"prefix": prefix(1)[..., :3], "delay": 1}, "prefix has shape"),
            ({"prefix": prefix(1), "delay": 4}, "must be in \\[0, P=3\\]"),
            ({"prefix": prefix(1), "delay": "two"}, "integer"),
            ({"prefix": prefix(1).tolist(), "delay": 1}, "must be a numpy array"),
            ({"delay": 2}, "needs the prefix"),
        ]:
            with pytest.raises(DataError, match=error):
                client._call({"type": "predict", "obs": obs(1), **message})
        assert client.predict(obs(1), prefix=prefix(1), delay=1).actions.shape == (1, 4, 4)
        assert client.health()["errors"] == 7


def test_requests_in_flight_and_mixed_batches(serve):
    server = serve(batch_window_ms=50)
    with PolicyClient(port=server.port) as guided, PolicyClient(port=server.port) as plain:
        with pytest.raises(DataError, match="no request in flight"):
            guided.poll()
        given = prefix(1)
        guided.submit(obs(1), prefix=given, delay=2)
        plain.submit(obs(1, seed=3))
        with pytest.raises(DataError, match="in flight"):
            guided.health()  # one request at a time on a connection
        chunk = guided.wait()
        assert plain.wait().shape == (1, 4, 4)
        np.testing.assert_array_equal(chunk[0, :2], given[0, :2])
        assert guided.last_reply.latency_ms["round_trip"] > 0
        assert guided.health()["ok"]


def test_the_client_executes_chunks_while_the_next_is_computed(serve):
    server = serve()
    with PolicyClient(port=server.port) as client:
        executor = client.realtime(mode="rtc", execute_horizon=2)
        actions = [executor.step(obs(1, seed=t)) for t in range(12)]
        assert all(a.shape == (1, 4) for a in actions)
        assert executor.stats.switches and len(executor.stats.assumed) >= 1
        executor.reset()  # drains a request in flight: the connection stays usable
        assert client.predict(obs(1)).actions.shape == (1, 4, 4)
        client.metadata = {**client.metadata, "realtime": None}  # as an older server says
        with pytest.raises(DataError, match="does not take prefixes"):
            client.realtime(mode="rtc")
        assert client.realtime(mode="naive", execute_horizon=3).mode == "naive"


def test_the_onnx_backend_runs_guided_forwards_on_the_policy(policy):
    backend = OnnxBackend(policy, chunk=None)  # the exported graph is never touched for these
    batch = {"observation.state": torch.zeros(1, 39), "task": [TASKS[1]]}
    actions = backend.predict(batch, 1, prefix=torch.ones(1, 2, 4) * 0.5, delay=np.array([2]))
    assert actions.shape == (1, 4, 4) and (actions[0, :2] == 0.5).all()
