"""Success of the scripted LIBERO expert on the benchmark's fixed initial states, per task.

    OMP_NUM_THREADS=1 python experiments/results/libero_expert/run_expert.py libero_object 10

writes experiments/results/libero_expert/<suite>.json after every task (a killed run resumes).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from mode_policy.envs.libero_experts import evaluate_expert
from mode_policy.fileio import atomic_write_json


def main() -> None:
    suite, n = sys.argv[1], int(sys.argv[2])
    out = Path(__file__).with_name(f"{suite}.json")
    before = json.loads(out.read_text()) if out.is_file() else {}
    if before.get("n_init_states") != n:
        before = {}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    start = time.perf_counter()
    spent = float(before.get("wall_s", 0.0))

    def save(results: dict) -> None:
        rows = {k: v for k, v in results.items()}
        played = [v for v in rows.values() if v.get("supported")]
        total = sum(v["successes"] for v in played), sum(v["episodes"] for v in played)
        atomic_write_json(
            out,
            {
                "suite": suite,
                "n_init_states": n,
                "protocol": "LIBERO fixed initial states 0..n-1, env.seed(r), 10 no-op settle steps, suite step limit",
                "commit": commit,
                "machine": platform.processor() or platform.machine(),
                "wall_s": spent + time.perf_counter() - start,
                "successes": total[0],
                "episodes": total[1],
                "mean": total[0] / max(1, total[1]),
                "per_task": rows,
            },
        )

    results = dict(before.get("per_task", {}))

    def on_task(name: str, record: dict) -> None:
        results[name] = record
        save(results)

    evaluate_expert(suite, n, on_task=on_task, done=results)
    save(results)


if __name__ == "__main__":
    main()
