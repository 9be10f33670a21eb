"""The policy server on 127.0.0.1: results, error replies, batching, health, a vanished client, shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request

import numpy as np
import pytest
import torch
from served import ACTION_MAX, ACTION_MIN, TASKS, RunningServer, make_policy
from websockets.sync.client import connect

from mode_policy import MoDEPolicy
from mode_policy.errors import ConfigError, DataError
from mode_policy.serving import PolicyClient, PolicyServer
from mode_policy.serving.backends import OnnxBackend, TorchBackend
from mode_policy.serving.export import onnx_runtime_available
from mode_policy.serving.protocol import pack, unpack


def obs(rows: int = 1, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"observation.state": rng.normal(size=(rows, 39)).astype(np.float32), "task": [TASKS[0]] * rows}


def test_actions_are_the_policys_for_the_same_noise(serve, policy):
    server = serve()
    with PolicyClient(port=server.port) as client:
        assert client.metadata["features"]["known_tasks"] == sorted(TASKS)
        torch.manual_seed(123)  # the model thread draws the initial noise from the global generator
        reply = client.predict(obs(2))
    torch.manual_seed(123)
    batch = obs(2)
    expected = policy.predict_action_chunk({**batch, "observation.state": torch.from_numpy(batch["observation.state"])})
    assert reply.actions.shape == (2, 4, 4) and reply.actions.dtype == np.float32
    np.testing.assert_allclose(reply.actions, expected.numpy(), atol=1e-6)
    assert (reply.actions >= np.array(ACTION_MIN) - 1e-6).all() and (reply.actions <= np.array(ACTION_MAX) + 1e-6).all()
    latency = reply.latency_ms
    assert set(latency) == {"server", "queue", "compute", "round_trip"} and latency["compute"] > 0
    assert latency["round_trip"] >= latency["server"] >= latency["compute"] and reply.batch_size == 2


def test_bad_requests_get_errors_and_the_connection_goes_on(serve):
    server = serve()
    with PolicyClient(port=server.port) as client:
        for bad, message in [
            ({**obs(), "observation.state": np.zeros((1, 38), np.float32)}, "expected \\(B, 39\\)"),
            ({**obs(), "observation.state": np.full((1, 39), np.nan, np.float32)}, "contains NaN"),
            ({**obs(), "observation.state": np.zeros((1, 39), np.int32)}, "dtype int32"),
            ({**obs(), "task": "fly to the moon"}, "unknown instruction 'fly to the moon'"),
            (
                {**obs(), "observation.images.wrist": np.zeros((1, 8, 8, 3), np.uint8)},
                "unknown observation key 'observation.images.wrist'",
            ),
        ]:
            with pytest.raises(DataError, match=message):
                client.predict(bad)
        assert client.predict(obs()).actions.shape == (1, 4, 4)
        health = client.health()
    assert health["ok"] and health["errors"] == 5 and health["requests"] == 6


def test_raw_garbage_and_pickle_get_error_replies(serve):
    server = serve()
    with connect(f"ws://127.0.0.1:{server.port}", proxy=None) as ws:
        unpack(ws.recv(timeout=10))  # metadata
        for frame, message in [
            (b"\xc1garbage", "not a msgpack message"),
            (__import__("pickle").dumps({"type": "predict"}), "msgpack"),
            ("text", "text frame"),
            (pack({"type": "train", "id": 3}), "unknown message type 'train'"),
            (pack({"type": "predict", "id": 4, "obs": [1]}), "obs must be a map"),
        ]:
            ws.send(frame)
            reply = unpack(ws.recv(timeout=10))
            assert reply["ok"] is False and message in reply["error"]
        ws.send(pack({"type": "predict", "id": 5, "obs": obs()}))
        assert unpack(ws.recv(timeout=30))["ok"] is True


def test_clients_that_ask_together_share_one_forward(serve):
    server = serve(batch_window_ms=5000)  # the batch closes once every connection has a request in it
    clients = [PolicyClient(port=server.port) for _ in range(4)]
    barrier, replies = threading.Barrier(4), {}

    def ask(i: int) -> None:
        barrier.wait(timeout=30)
        replies[i] = clients[i].predict(obs(rows=i + 1, seed=i))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for c in clients:
        c.close()
    assert sorted(replies) == [0, 1, 2, 3]
    assert [replies[i].actions.shape[0] for i in range(4)] == [1, 2, 3, 4]
    assert {r.batch_size for r in replies.values()} == {10} and server.server.batcher.batches == 1


def test_select_action_queues_a_chunk_on_the_client(serve):
    server = serve()
    with PolicyClient(port=server.port) as client:
        frame = {"observation.state": np.zeros((1, 39), np.float32), "task": TASKS[1]}
        actions = [client.select_action(frame) for _ in range(5)]  # n_action_steps = 4
        assert all(a.shape == (1, 4) for a in actions)
        assert client.health()["requests"] == 2  # chunk 1 (actions 1-4), chunk 2 (action 5)
        client.reset()
        client.select_action(frame)
        assert client.health()["requests"] == 4


def test_health_endpoint_over_http(serve):
    server = serve()
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=10) as response:
        health = json.loads(response.read())
    assert response.status == 200 and health["ok"] is True and health["requests"] == 0


def test_a_client_gone_mid_request_leaves_the_server_serving(serve):
    server = serve(batch_window_ms=2000)
    with PolicyClient(port=server.port) as survivor:
        with connect(f"ws://127.0.0.1:{server.port}", proxy=None) as gone:
            unpack(gone.recv(timeout=10))
            gone.send(pack({"type": "predict", "id": 1, "obs": obs()}))  # waits in the batch window ...
            gone.socket.shutdown(2)  # ... while its client vanishes without a close handshake
            gone.socket.close()
        assert survivor.predict(obs()).actions.shape == (1, 4, 4)
        assert survivor.health()["ok"]


def test_sigterm_shuts_down_gracefully(tmp_path):
    make_policy().save_pretrained(tmp_path / "model")
    code = (
        "import sys; from mode_policy.cli.parsing import parse_command; from mode_policy.cli.serve import COMMANDS;"
        "c = COMMANDS['serve']; sys.exit(c.run(parse_command(c.options, sys.argv[1:], 'serve', None, c.positional)))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "model"), "--port", "0", "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        assert "serving" in line, proc.stderr.read()
        port = int(line.split("ws://127.0.0.1:")[1].split()[0])
        with PolicyClient(port=port) as client:
            assert client.predict(obs()).actions.shape == (1, 4, 4)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        assert "stopped after 1 requests (0 errors)" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_from_path_builds_the_servers_torch_backend_on_the_chosen_threads(tmp_path):
    make_policy().save_pretrained(tmp_path / "model")
    server = PolicyServer.from_path(tmp_path / "model", threads=1, port=0, max_batch=8)
    assert isinstance(server.backend, TorchBackend) and server.backend.name == "torch"
    assert server.threads == 1 and server.governor is None  # a chosen count stays as it is
    assert server.max_rows == 8 and torch.get_num_threads() == 1  # this thread only loaded
    running = RunningServer(server)
    try:
        with PolicyClient(port=running.port) as client:
            assert client.metadata["backend"] == "torch" and client.metadata["features"]["known_tasks"] == sorted(TASKS)
            torch.manual_seed(3)
            reply = client.predict(obs(2, seed=1))
            assert client.health()["torch_threads"] == 1
    finally:
        running.stop()
    policy = make_policy()  # the same weights (it seeds torch itself, so before the noise's seed)
    torch.manual_seed(3)
    batch = obs(2, seed=1)
    want = policy.predict_action_chunk({**batch, "observation.state": torch.from_numpy(batch["observation.state"])})
    np.testing.assert_allclose(reply.actions, want.numpy(), atol=1e-6)


def test_from_path_refuses_bad_options_before_loading(tmp_path):
    with pytest.raises(ConfigError, match="backend='tflite': expected 'torch' or 'onnx'"):
        PolicyServer.from_path(tmp_path / "nowhere", backend="tflite")
    with pytest.raises(ConfigError, match="max_batch=0 must be >= 1"):
        PolicyServer.from_path(tmp_path / "nowhere", max_batch=0)
    with pytest.raises(ConfigError, match="give a run directory"):
        PolicyServer.from_path("")


@pytest.mark.skipif(not onnx_runtime_available(), reason="needs onnxruntime, onnx and onnxscript")
def test_from_path_onnx_serves_one_row_forwards_with_the_exported_sampler(tmp_path, monkeypatch):
    from mode_policy.serving import server as server_module

    make_policy().save_pretrained(tmp_path / "model")
    policy = MoDEPolicy.from_pretrained(tmp_path / "model")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # threads=0 chooses, and a governor follows
    setters, lines = [], []
    real = server_module.make_governor
    monkeypatch.setattr(
        server_module,
        "make_governor",
        lambda *a, set_threads: setters.append(set_threads) or real(*a, set_threads=set_threads),
    )
    server = PolicyServer.from_path(tmp_path / "model", backend="onnx", threads=0, port=0, progress=lines.append)
    assert isinstance(server.backend, OnnxBackend) and lines == ["exporting the cached sampler for batch 1 to ONNX..."]
    assert setters == [server.backend.set_threads] and server.backend.chunk.threads == server.threads
    if server.governor is not None:  # None off Linux
        assert server.governor.threads == server.threads
    calls = []
    run = server.backend.chunk.predict_action_chunk
    monkeypatch.setattr(server.backend.chunk, "predict_action_chunk", lambda *a: calls.append(1) or run(*a))
    running = RunningServer(server)
    try:
        with PolicyClient(port=running.port) as client:
            assert client.metadata["backend"].startswith("onnx")
            torch.manual_seed(7)
            one = client.predict(obs(1, seed=3))
            two = client.predict(obs(2, seed=3))  # two rows: the policy itself
            bad = obs(1)
            bad["observation.state"][0, 5] = np.nan
            with pytest.raises(DataError, match="NaN"):
                client.predict(bad)
    finally:
        running.stop()
    assert calls == [1]  # only the one-row forward went to ONNX Runtime
    torch.manual_seed(7)
    batch = obs(1, seed=3)
    want = policy.predict_action_chunk({**batch, "observation.state": torch.from_numpy(batch["observation.state"])})
    np.testing.assert_allclose(one.actions, want.numpy(), atol=1e-5)
    assert two.actions.shape == (2, 4, 4)
    # what the governor calls with a new count: torch's, and a new ONNX Runtime session on it
    session, before = server.backend.chunk.session, torch.get_num_threads()
    try:
        server.backend.set_threads(1)
        assert torch.get_num_threads() == 1 and server.backend.chunk.threads == 1
        assert server.backend.chunk.session is not session
        assert server.backend.chunk.session.get_session_options().intra_op_num_threads == 1
    finally:
        torch.set_num_threads(before)


def _mixture_policy():
    """The tiny policy normalising two datasets: 'wide' (7-d actions, 39-d states), 'narrow' (4-d, 8-d)."""
    torch.manual_seed(0)
    from mode_policy import MoDEPolicy, get_preset

    cfg = get_preset(
        "tiny", state_dim=39, action_dim=7, goal_dim=8, goal_encoder={"type": "task", "tasks": TASKS, "dim": 8}
    )
    policy = MoDEPolicy(cfg)
    with torch.no_grad():
        torch.nn.init.normal_(policy.denoiser.net.action_out.weight, std=0.5)
    policy.set_dataset_normalization(
        {
            "wide": {
                "action": {"min": [-1.0] * 7, "max": [1.0] * 7},
                "observation.state": {"mean": [0.0] * 39, "std": [1.0] * 39},
            },
            "narrow": {
                "action": {"min": ACTION_MIN, "max": ACTION_MAX},
                "observation.state": {"mean": [0.5] * 8, "std": [2.0] * 8},
            },
        }
    )
    return policy.eval()


def test_a_mixture_policy_is_served_through_one_datasets_widths_and_normalisation():
    from mode_policy.dataset_view import for_dataset

    policy = _mixture_policy()
    running = RunningServer(PolicyServer(for_dataset(policy, "narrow"), host="127.0.0.1", port=0))
    try:
        with PolicyClient(port=running.port) as client:
            meta = client.metadata
            assert meta["dataset"] == "narrow" and meta["features"]["state"] == [1, 8]
            assert meta["features"]["actions"] == [4, 4] and meta["policy"]["action_dim"] == 4
            state = np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32)
            torch.manual_seed(5)
            reply = client.predict({"observation.state": state, "task": [TASKS[1]] * 2})
            with pytest.raises(DataError, match="expected \\(B, 8\\)"):  # the widest state is not this dataset's
                client.predict({"observation.state": np.zeros((1, 39), np.float32), "task": TASKS[0]})
        torch.manual_seed(5)
        want = policy.predict_action_chunk(
            {"observation.state": torch.from_numpy(state), "task": [TASKS[1]] * 2}, dataset="narrow"
        )
        assert reply.actions.shape == (2, 4, 4)
        np.testing.assert_allclose(reply.actions, want.numpy(), atol=1e-6)
        low, high = np.array(ACTION_MIN) - 1e-6, np.array(ACTION_MAX) + 1e-6
        assert (reply.actions >= low).all() and (reply.actions <= high).all()
    finally:
        running.stop()


def test_a_server_of_a_mixture_policy_needs_a_dataset_view():
    with pytest.raises(ConfigError, match="mixture of .*wide.*narrow.*--dataset_name"):
        PolicyServer(_mixture_policy(), port=0)


def test_serve_of_a_mixture_policy_needs_a_dataset_name(tmp_path, capsys):
    from mode_policy.cli import main as cli

    _mixture_policy().save_pretrained(tmp_path / "model")
    assert cli(["serve", str(tmp_path / "model"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "mixture" in err and "wide" in err and "narrow" in err and "--dataset_name" in err
    assert cli(["serve", str(tmp_path / "model"), "--port", "0", "--dataset_name", "calvin"]) == 2
    assert "'calvin' is not one of the policy's datasets" in capsys.readouterr().err


def test_forwards_run_on_the_servers_thread_count_and_step_its_governor(policy, monkeypatch):
    # a new thread runs torch on the default thread count whatever another thread set, so the model
    # thread must set its own; the governor is stepped there after every forward
    import threading as th

    from mode_policy.serving import batcher

    calls = []
    real = torch.set_num_threads
    monkeypatch.setattr(
        batcher.torch, "set_num_threads", lambda n: calls.append((th.current_thread().name, n)) or real(n)
    )

    class Governor:
        threads, changes = 1, []

        def step(self):
            calls.append((th.current_thread().name, "step"))

    running = RunningServer(PolicyServer(policy, host="127.0.0.1", port=0, threads=1, governor=Governor()))
    try:
        with PolicyClient(port=running.port) as client:
            client.predict(obs(1))
            client.predict(obs(2))
            assert client.health()["torch_threads"] == 1
    finally:
        running.stop()
    model = [name for name, _ in calls]
    assert calls[0][1] == 1 and [c[1] for c in calls[1:]] == ["step", "step"]
    assert len(set(model)) == 1 and model[0].startswith("mode-policy-model")


def test_serve_loads_on_one_thread_and_forwards_on_the_chosen_count(tmp_path, monkeypatch):
    # the main thread stays on one torch thread from the start (two OpenMP teams slow the model
    # thread's forwards several-fold); the forwards get the chosen count
    from mode_policy.cli import serve as serve_cli

    make_policy().save_pretrained(tmp_path / "model")
    seen = {}
    load = MoDEPolicy.from_pretrained
    monkeypatch.setattr(
        MoDEPolicy,
        "from_pretrained",
        lambda *a, **k: seen.setdefault("load_threads", torch.get_num_threads()) and load(*a, **k),
    )
    monkeypatch.setattr(
        "mode_policy.serving.run_server", lambda server, ready: seen.setdefault("server_threads", server.threads)
    )
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # as a fresh process would start on this machine
    try:
        opts = serve_cli.ServeOptions(path=str(tmp_path / "model"), threads=2, port=0)
        assert serve_cli.run_serve(opts) == 0
    finally:
        torch.set_num_threads(before)
    assert seen == {"load_threads": 1, "server_threads": 2}


@pytest.mark.skipif(not onnx_runtime_available(), reason="needs onnxruntime, onnx and onnxscript")
def test_onnx_backend_serves_a_mixture_policys_dataset():
    from mode_policy.dataset_view import for_dataset

    policy = _mixture_policy()
    server = PolicyServer(for_dataset(policy, "narrow"), host="127.0.0.1", port=0, backend="onnx", threads=1)
    assert server.backend.chunk.threads == 1
    running = RunningServer(server)
    state = np.random.default_rng(2).normal(size=(1, 8)).astype(np.float32)
    try:
        with PolicyClient(port=running.port) as client:
            torch.manual_seed(11)
            reply = client.predict({"observation.state": state, "task": TASKS[0]})
    finally:
        running.stop()
    torch.manual_seed(11)  # the server drew the noise at the policy's full action width, as eager does
    want = policy.predict_action_chunk(
        {"observation.state": torch.from_numpy(state), "task": [TASKS[0]]}, dataset="narrow"
    )
    assert reply.actions.shape == (1, 4, 4)
    np.testing.assert_allclose(reply.actions, want.numpy(), atol=1e-5)
