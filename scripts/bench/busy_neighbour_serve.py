"""Batch-1 serving latency beside a busy neighbour that starts while the server runs.

Serves a ``cpu``-preset policy (random weights, as ``load_test_server.py`` builds it) with
``mode-policy serve`` in a subprocess, once per backend (torch, onnx) and thread setting
(automatic, which starts on the free cores and follows neighbours; ``--threads 2``), and
sends one-row requests from one client for ``--seconds``. A process spinning on one core
starts ``--spin-after`` seconds in. It prints the median compute time of the forwards before
the spinner started and from ``--settle`` seconds after, their ratio, and the server's thread
count at the end (``/healthz``). Run it alone on the machine.

    python scripts/bench/busy_neighbour_serve.py [--seconds 25]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_test_server import SERVE, build_model  # noqa: E402  (the same served policy)

from mode_policy.envs.metaworld import resolve_tasks  # noqa: E402
from mode_policy.serving import PolicyClient  # noqa: E402


def serve(model: Path, backend: str, threads: int) -> tuple[subprocess.Popen, int]:
    """``mode-policy serve`` without OMP_NUM_THREADS (the automatic choice reads the machine)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(model), "--port", "0", "--threads", str(threads), "--backend", backend],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    line = proc.stdout.readline()
    while line.startswith("exporting"):
        line = proc.stdout.readline()
    if "serving" not in line:
        raise RuntimeError(f"server did not start: {line}{proc.stderr.read()}")
    return proc, int(line.split("ws://127.0.0.1:")[1].split()[0])


def run(model: Path, backend: str, threads: int, seconds: float, spin_after: float, settle: float, task: str) -> dict:
    proc, port = serve(model, backend, threads)
    spinner = None
    times: list[tuple[float, float]] = []
    try:
        rng = np.random.default_rng(0)
        with PolicyClient(port=port, timeout=60) as client:
            start = time.perf_counter()
            while (now := time.perf_counter() - start) < seconds:
                if spinner is None and now >= spin_after:
                    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                obs = {"observation.state": rng.normal(size=(1, 39)).astype(np.float32), "task": task}
                times.append((now, client.predict(obs).latency_ms["compute"]))
            threads_end = client.health().get("torch_threads")
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
        proc.terminate()
        proc.wait(30)
    quiet = [ms for t, ms in times if 1.0 <= t < spin_after]
    busy = [ms for t, ms in times if t >= spin_after + settle]
    return {
        "quiet_ms": statistics.median(quiet),
        "busy_ms": statistics.median(busy),
        "busy_over_quiet": statistics.median(busy) / statistics.median(quiet),
        "requests": len(times),
        "threads_at_end": threads_end,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=25.0)
    parser.add_argument("--spin-after", type=float, default=8.0)
    parser.add_argument("--settle", type=float, default=8.0)
    parser.add_argument("--backends", default="torch,onnx")
    args = parser.parse_args()
    tasks = resolve_tasks("mt10")
    with tempfile.TemporaryDirectory(prefix="busy-serve-") as tmp:
        model = build_model(Path(tmp) / "model", tasks)
        for backend in args.backends.split(","):
            for threads in (0, 2):
                result = run(model, backend, threads, args.seconds, args.spin_after, args.settle, tasks[0])
                label = "auto" if threads == 0 else f"--threads {threads}"
                print(
                    f"{backend:5s} {label:11s} quiet {result['quiet_ms']:6.2f} ms, with the spinner "
                    f"{result['busy_ms']:6.2f} ms ({result['busy_over_quiet']:.2f}x), "
                    f"{result['requests']} requests, threads at the end {result['threads_at_end']}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
