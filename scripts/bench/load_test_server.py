"""Load test of ``mode-policy serve``: concurrent clients against a served ``cpu``-preset policy.

Builds a ``cpu``-preset policy (random weights, set normalisation, a learned task
encoder over the MT10 instructions, so requests carry ``task`` strings), serves
it from a subprocess on 127.0.0.1, then, at the same time:

* ``--clients`` clients each send ``--requests`` predictions (state-only 39-d
  observations, one row each) and time every round trip;
* one client sends malformed requests (bad key, shape, dtype, NaN, inf, unknown
  instruction, garbage bytes, a pickle) and checks that each gets an error reply;
* a client process sends a prediction and is killed (SIGKILL) before it reads
  the reply.

It prints failed requests, p50 / p99 latency, requests/s, batch sizes, the
malformed requests answered, and whether the server still serves after the
kill; finally it stops the server with SIGTERM and checks a clean exit.

With ``--rtc``, each client instead runs a real-time chunking control loop
(:class:`mode_policy.serving.realtime.ChunkExecutor` through ``PolicyClient.realtime``) at one control
tick per ``--period-ms``, for ``--requests`` chunk requests: the next request is in flight while
the current chunk executes, and carries the actions that run meanwhile with the measured delay.
It also reports the measured delays (in ticks) and checks that every chunk starts with the
actions it was given to keep.

    OMP_NUM_THREADS=1 python scripts/bench/load_test_server.py [--clients 8 --requests 200 --threads 1] [--rtc]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from websockets.sync.client import connect

from mode_policy import MoDEPolicy, get_preset
from mode_policy.envs.metaworld import resolve_tasks
from mode_policy.serving import PolicyClient
from mode_policy.serving.protocol import pack, unpack

SERVE = (
    "import sys; from mode_policy.cli.parsing import parse_command; from mode_policy.cli.serve import COMMANDS;"
    "c = COMMANDS['serve']; sys.exit(c.run(parse_command(c.options, sys.argv[1:], 'serve', None, c.positional)))"
)
KILLED_CLIENT = """
import sys, time
import numpy as np
from websockets.sync.client import connect
from mode_policy.serving.protocol import pack

with connect(sys.argv[1], proxy=None) as ws:
    ws.recv(timeout=30)
    ws.send(pack({"type": "predict", "id": 1,
                  "obs": {"observation.state": np.zeros((1, 39), np.float32), "task": sys.argv[2]}}))
    print("sent", flush=True)
    time.sleep(60)  # killed here, before it reads the reply
"""


def build_model(folder: Path, tasks: list[str]) -> Path:
    torch.manual_seed(0)
    cfg = get_preset(
        "cpu", state_dim=39, action_dim=4, goal_dim=32, goal_encoder={"type": "task", "tasks": tasks, "dim": 32}
    )
    policy = MoDEPolicy(cfg)
    with torch.no_grad():  # a trained-looking output head (init is zero)
        torch.nn.init.normal_(policy.denoiser.net.action_out.weight, std=0.02)
    policy.set_normalization(
        {"action": {"min": [-1.0] * 4, "max": [1.0] * 4}, "observation.state": {"mean": [0.0] * 39, "std": [1.0] * 39}}
    )
    return policy.save_pretrained(folder)


def start_server(model: Path, threads: int, window_ms: float, backend: str) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SERVE,
            str(model),
            "--port",
            "0",
            "--threads",
            str(threads),
            "--batch_window_ms",
            str(window_ms),
            "--backend",
            backend,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    line = proc.stdout.readline()
    while line.startswith("exporting"):  # --backend onnx exports the batch-1 sampler first
        line = proc.stdout.readline()
    if "serving" not in line:
        raise RuntimeError(f"server did not start: {line}{proc.stderr.read()}")
    return proc, int(line.split("ws://127.0.0.1:")[1].split()[0])


def client_load(port: int, n: int, seed: int, tasks: list[str], out: dict) -> None:
    rng = np.random.default_rng(seed)
    rtt, server, batch, failures = [], [], [], []
    with PolicyClient(port=port, timeout=60) as client:
        for i in range(n):
            obs = {"observation.state": rng.normal(size=(1, 39)).astype(np.float32), "task": tasks[i % len(tasks)]}
            try:
                reply = client.predict(obs)
            except Exception as err:  # noqa: BLE001 - counted and reported
                failures.append(repr(err))
                continue
            if reply.actions.shape != (1, 10, 4) or not np.isfinite(reply.actions).all():
                failures.append(f"bad actions {reply.actions.shape}")
            rtt.append(reply.latency_ms["round_trip"])
            server.append(reply.latency_ms["server"])
            batch.append(reply.batch_size)
    out[seed] = {"rtt": rtt, "server": server, "batch": batch, "failures": failures}


class CheckedClient:
    """A PolicyClient as a chunk source that checks every reply starts with the frozen actions sent."""

    def __init__(self, client: PolicyClient, out: dict) -> None:
        self.client, self.out = client, out
        self.sent: tuple | None = None

    def submit(self, batch, prefix, delay) -> None:
        self.sent = (None if prefix is None else np.array(prefix), delay, time.perf_counter())
        self.client.submit(batch, prefix, delay)

    def _checked(self, chunk):
        if chunk is not None:
            prefix, delay, start = self.sent
            self.out["rtt"].append((time.perf_counter() - start) * 1e3)
            self.out["batch"].append(self.client.last_reply.batch_size)
            self.out["server"].append(self.client.last_reply.latency_ms["server"])
            if prefix is not None and not np.array_equal(chunk[:, :delay], prefix[:, :delay]):
                self.out["failures"].append(f"a chunk does not start with its {delay} frozen actions")
        return chunk

    def poll(self, elapsed: int):
        return self._checked(self.client.poll(elapsed))

    def wait(self):
        return self._checked(self.client.wait())


def client_rtc(port: int, n: int, seed: int, tasks: list[str], period_ms: float, out: dict) -> None:
    """A control loop at one tick per ``period_ms`` with RTC execution, until ``n`` chunks arrived."""
    from mode_policy.serving.realtime import ChunkExecutor

    rng = np.random.default_rng(seed)
    record = {"rtt": [], "server": [], "batch": [], "failures": [], "delays": [], "assumed": [], "ticks": 0}
    with PolicyClient(port=port, timeout=60) as client:
        cfg = client.metadata["policy"]
        executor = ChunkExecutor(CheckedClient(client, record), cfg["horizon"], cfg["n_action_steps"], "rtc")
        next_tick = time.perf_counter()
        while len(record["rtt"]) < n:
            obs = {"observation.state": rng.normal(size=(1, 39)).astype(np.float32), "task": tasks[seed % len(tasks)]}
            try:
                action = executor.step(obs)
            except Exception as err:  # noqa: BLE001 - counted and reported
                record["failures"].append(repr(err))
                break
            if action.shape != (1, 4) or not np.isfinite(action).all():
                record["failures"].append(f"bad action {action.shape}")
            record["ticks"] += 1
            next_tick += period_ms / 1e3
            time.sleep(max(0.0, next_tick - time.perf_counter()))
        executor.reset()  # take the request in flight
    stats = executor.stats
    record["delays"], record["assumed"], record["waits"] = stats.delays, stats.assumed, stats.waits
    out[seed] = record


def malformed(port: int, tasks: list[str], rounds: int, out: dict) -> None:
    good = np.zeros((1, 39), np.float32)
    cases = [
        {"observation.state": good, "task": tasks[0], "observation.images.top": np.zeros((1, 8, 8, 3), np.uint8)},
        {"observation.state": np.zeros((1, 38), np.float32), "task": tasks[0]},
        {"observation.state": np.zeros((1, 39), np.int64), "task": tasks[0]},
        {"observation.state": np.full((1, 39), np.nan, np.float32), "task": tasks[0]},
        {"observation.state": np.full((1, 39), np.inf, np.float32), "task": tasks[0]},
        {"observation.state": good, "task": "juggle three balls"},
        {"observation.state": good},
    ]
    frames = [pack({"type": "predict", "id": i, "obs": obs}) for i, obs in enumerate(cases)]
    frames += [b"\xc1 not msgpack", pickle.dumps({"type": "predict", "obs": good})]
    sent = answered = 0
    errors = set()
    with connect(f"ws://127.0.0.1:{port}", proxy=None, max_size=2**26) as ws:
        unpack(ws.recv(timeout=30))
        for _ in range(rounds):
            for frame in frames:
                ws.send(frame)
                sent += 1
                reply = unpack(ws.recv(timeout=60))
                if reply["ok"] is False and reply["error"]:
                    answered += 1
                    errors.add(reply["error"])
            time.sleep(0.05)
    out["malformed"] = {"sent": sent, "answered_with_error": answered, "distinct_errors": sorted(errors)}


def kill_mid_request(port: int, task: str) -> dict:
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_CLIENT, f"ws://127.0.0.1:{port}", task],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    line = proc.stdout.readline()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return {"client_sent_then_killed": line.strip() == "sent", "exit": proc.returncode}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--batch-window-ms", type=float, default=2.0)
    parser.add_argument(
        "--backend",
        default="torch",
        choices=("torch", "onnx"),
        help="the server's --backend (onnx: one-row forwards on ONNX Runtime)",
    )
    parser.add_argument("--rtc", action="store_true", help="clients run an RTC control loop (see above)")
    parser.add_argument("--period-ms", type=float, default=20.0, help="--rtc: control period of the clients")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tasks = resolve_tasks("mt10")
    with tempfile.TemporaryDirectory(prefix="mode-policy-load-") as tmp:
        model = build_model(Path(tmp) / "model", tasks)
        proc, port = start_server(model, args.threads, args.batch_window_ms, args.backend)
        try:
            with PolicyClient(port=port, timeout=60) as warm:  # first forward builds the expert cache
                warm.predict({"observation.state": np.zeros((1, 39), np.float32), "task": tasks[0]})
            results: dict = {}
            if args.rtc:
                workers = [
                    threading.Thread(target=client_rtc, args=(port, args.requests, i, tasks, args.period_ms, results))
                    for i in range(args.clients)
                ]
            else:
                workers = [
                    threading.Thread(target=client_load, args=(port, args.requests, i, tasks, results))
                    for i in range(args.clients)
                ]
            workers.append(threading.Thread(target=malformed, args=(port, tasks, 5, results)))
            start = time.perf_counter()
            for w in workers:
                w.start()
            killed = kill_mid_request(port, tasks[1])
            for w in workers:
                w.join()
            elapsed = time.perf_counter() - start
            with PolicyClient(port=port, timeout=60) as after:
                after.predict({"observation.state": np.zeros((1, 39), np.float32), "task": tasks[2]})
                health = after.health()
            killed["server_serving_after"] = bool(health["ok"])
        finally:
            proc.send_signal(signal.SIGTERM)
            exit_code = proc.wait(timeout=60)
    load = [results[i] for i in range(args.clients)]
    rtt = [v for r in load for v in r["rtt"]]
    server = [v for r in load for v in r["server"]]
    batch = [v for r in load for v in r["batch"]]
    failures = [f for r in load for f in r["failures"]]
    summary = {
        "clients": args.clients,
        "requests_per_client": args.requests,
        "server_torch_threads": args.threads,
        "backend": args.backend,
        "batch_window_ms": args.batch_window_ms,
        "requests": len(rtt) + len(failures),
        "failed": len(failures),
        "failures": failures[:5],
        "round_trip_ms": {"p50": percentile(rtt, 50), "p99": percentile(rtt, 99), "max": max(rtt, default=0.0)},
        "server_ms": {"p50": percentile(server, 50), "p99": percentile(server, 99)},
        "requests_per_s": len(rtt) / elapsed,
        "seconds": elapsed,
        "batch_rows": {"mean": float(np.mean(batch)) if batch else 0.0, "max": max(batch, default=0)},
        "malformed": results.get("malformed"),
        "killed_client": killed,
        "server_health_after": health,
        "server_exit_code_after_sigterm": exit_code,
    }
    if args.rtc:
        delays = [d for r in load for d in r["delays"]]
        summary["rtc"] = {
            "period_ms": args.period_ms,
            "ticks": sum(r["ticks"] for r in load),
            "switches": len(delays),
            "ran_out_and_waited": sum(r["waits"] for r in load),
            "measured_delay_ticks": {"mean": float(np.mean(delays)) if delays else None, "max": max(delays, default=0)},
            "assumed_delay_ticks": {
                d: sum(a == d for r in load for a in r["assumed"])
                for d in sorted({a for r in load for a in r["assumed"]})
            },
        }
    m = summary["malformed"]
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"{summary['clients']} clients x {summary['requests_per_client']} requests (backend {args.backend}): "
            f"{summary['requests']} requests, {summary['failed']} failed, {summary['seconds']:.1f} s"
        )
        print(
            f"round trip p50 {summary['round_trip_ms']['p50']:.1f} ms, p99 {summary['round_trip_ms']['p99']:.1f} ms;"
            f" server p50 {summary['server_ms']['p50']:.1f} ms, p99 {summary['server_ms']['p99']:.1f} ms"
        )
        print(
            f"{summary['requests_per_s']:.1f} requests/s; rows per forward mean {summary['batch_rows']['mean']:.2f},"
            f" max {summary['batch_rows']['max']}"
        )
        print(f"malformed: {m['answered_with_error']} of {m['sent']} answered with an error, e.g.")
        for error in m["distinct_errors"]:
            print(f"    {error}")
        print(
            f"killed client: sent={killed['client_sent_then_killed']}, server serving after: "
            f"{killed['server_serving_after']} (health: {health['requests']} requests, {health['errors']} errors)"
        )
        print(f"server exit code after SIGTERM: {exit_code}")
        if args.rtc:
            rtc = summary["rtc"]
            print(
                f"rtc: {rtc['ticks']} control ticks of {args.period_ms:g} ms, {rtc['switches']} chunk switches "
                f"({rtc['ran_out_and_waited']} after the chunk ran out); "
                f"measured delay mean {rtc['measured_delay_ticks']['mean']} ticks, max "
                f"{rtc['measured_delay_ticks']['max']}; delays the requests assumed: {rtc['assumed_delay_ticks']}"
            )
    ok = summary["failed"] == 0 and m["answered_with_error"] == m["sent"] and killed["server_serving_after"]
    return 0 if ok and exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
