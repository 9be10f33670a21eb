"""Training throughput beside a busy neighbour that starts *after* training has begun.

Trains the quickstart's recipe (``cpu`` preset, batch 128) on MT10 demonstrations in a
subprocess per scenario and reads the samples/s of its logged windows (every 5 steps):

* ``quiet``: nothing else runs (threads chosen automatically);
* ``auto``: a process spinning on one core starts ``--spin-after`` seconds into training,
  threads chosen automatically (the start-time choice sees a quiet machine; the thread
  governor must notice the neighbour);
* ``forced2``: the same neighbour, ``--threads 2`` (what the governor avoids);
* ``leaves``: the spinner runs when training starts (so 1 thread is chosen) and stops
  ``--spin-after`` seconds into training: the governor must take the second core back.

It prints the median samples/s of the windows that start at least ``--settle`` seconds after
the spinner started (``leaves``: stopped), over the quiet run's median, and the thread changes
each run recorded.
One heavy job at a time: run it alone on the machine.

    python scripts/bench/busy_neighbour_train.py [--dataset data/mt10] [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPIN = "while True: pass"


def train(
    dataset: Path, out: Path, steps: int, threads: int, spin_after: float | None, leaves: bool = False
) -> tuple[list[dict], dict]:
    """Run one training, a spinner starting ``spin_after`` s after its first logged window (``leaves``:
    running from before the start and stopping then); returns its metric records and its summary."""
    cmd = [
        sys.executable,
        "-m",
        "mode_policy.cli",
        "train",
        "--dataset",
        str(dataset),
        "--out",
        str(out),
        "--preset",
        "cpu",
        "--steps",
        str(steps),
        "--batch_size",
        "128",
        "--log_every",
        "5",
        "--checkpoint_every",
        str(10 * steps),
        "--threads",
        str(threads),
        "--progress",
        "false",
    ]
    spinner = subprocess.Popen([sys.executable, "-c", SPIN]) if leaves else None
    if leaves:
        time.sleep(1.0)  # the start-time choice sees it
    proc = subprocess.Popen(cmd)
    switched = False
    try:
        while proc.poll() is None:
            if spin_after is not None and not switched and _first_wall(out) is not None:
                time.sleep(spin_after)  # counted from the first logged window: training has begun
                if leaves:
                    spinner.kill()
                    spinner.wait()
                    spinner = None
                else:
                    spinner = subprocess.Popen([sys.executable, "-c", SPIN])
                switched = True
            time.sleep(0.2)
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    if proc.returncode:
        raise SystemExit(f"training failed ({proc.returncode}): {' '.join(cmd)}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "train_summary.json").read_text())
    return records, summary


def _first_wall(out: Path) -> float | None:
    path = out / "metrics.jsonl"
    if not path.exists() or not path.read_text().strip():
        return None
    return json.loads(path.read_text().splitlines()[0])["wall_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, default=None, help="MT10 demos (default: generated, 50 per task)")
    parser.add_argument("--steps", type=int, default=200, help="steps of the quiet and auto runs")
    parser.add_argument("--forced-steps", type=int, default=60, help="steps of the --threads 2 run (it is slow)")
    parser.add_argument("--spin-after", type=float, default=5.0)
    parser.add_argument("--settle", type=float, default=8.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="busy-neighbour-") as tmp:
        dataset = args.dataset
        if dataset is None:
            dataset = Path(tmp) / "mt10"
            subprocess.run(
                [sys.executable, "-m", "mode_policy.cli", "demos", "--tasks", "mt10", "--out", str(dataset)], check=True
            )
        results = {}
        for name, steps, threads, spin in (
            ("quiet", args.steps, 0, None),
            ("auto", args.steps, 0, args.spin_after),
            ("forced2", args.forced_steps, 2, args.spin_after),
            ("leaves", args.steps, 0, args.spin_after),
        ):
            records, summary = train(dataset, Path(tmp) / name, steps, threads, spin, leaves=name == "leaves")
            # wall_s of a record is the end of its window (5 steps); the spinner switched spin_after
            # seconds after the first record was written: compare on the training's own clock
            start = records[0]["wall_s"]
            spin_wall = None if spin is None else start + spin
            rates = [
                r["samples_per_s"]
                for r in records[1:]
                if spin_wall is None or r["wall_s"] - 5 * 128 / r["samples_per_s"] >= spin_wall + args.settle
            ]
            results[name] = {
                "median_samples_per_s": statistics.median(rates) if rates else float("nan"),
                "windows": len(rates),
                "start_threads": summary.get("torch_threads"),
                "thread_changes": summary.get("thread_changes", []),
            }
            print(f"{name}: {results[name]}", flush=True)
    quiet = results["quiet"]["median_samples_per_s"]
    for name in ("auto", "forced2", "leaves"):
        print(f"{name} / quiet: {results[name]['median_samples_per_s'] / quiet:.2f}")


if __name__ == "__main__":
    main()
