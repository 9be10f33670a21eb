"""Re-planning every 5 actions instead of 10: MT10 success of saved models both ways.

For each model, each ``--action_steps`` setting and each noise seed (100, 101, ...): 10 held-out
episodes per MT10 task (evaluation seed 0), one JSON line with the mean success, the tasks below
10/10 and the seconds taken. ``mode-policy eval RUN --action_steps N`` does the same per setting;
this one-off predates that flag (its output: experiments/results/quickstart_replan/).

    python scripts/bench/replan_eval.py runs/quickstart/run/model [MODEL ...] > replan_eval_output.jsonl
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mode_policy import MoDEPolicy
from mode_policy.envs import metaworld as mw
from mode_policy.evaluation.metaworld import rollout_batch
from mode_policy.evaluation.parallel import with_sampling


def evaluate(path: str, action_steps: int, noise_seed: int, tasks: list[str], episodes: int) -> dict:
    """One batch of ``episodes`` held-out episodes per task with ``action_steps`` actions per chunk."""
    policy = with_sampling(MoDEPolicy.from_pretrained(path).eval(), action_steps=action_steps)
    torch.manual_seed(noise_seed)
    start = time.time()
    names = [t for t in tasks for _ in range(episodes)]
    seeds = [mw.eval_seed(t, i, 0) for t in tasks for i in range(episodes)]
    out = rollout_batch(policy, names, seeds)
    per_task = dict.fromkeys(tasks, 0)
    for task, ok in zip(names, out["success"]):
        per_task[task] += int(ok)
    return {
        "model": path,
        "n_act": action_steps,
        "seed": noise_seed,
        "mean": float(out["success"].mean()),
        "weak": {t[:-3]: v for t, v in per_task.items() if v < episodes},
        "s": round(time.time() - start),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="saved model folders (a run's model/)")
    parser.add_argument("--action_steps", default="10,5", help="actions executed per chunk, one pass each")
    parser.add_argument("--noise_seeds", type=int, default=2, help="passes per setting, noise seeds 100, 101, ...")
    parser.add_argument("--episodes", type=int, default=10, help="held-out episodes per task")
    args = parser.parse_args()
    tasks = mw.resolve_tasks("mt10")
    for path in args.models:
        for n_act in (int(n) for n in args.action_steps.split(",")):
            for s in range(args.noise_seeds):
                print(json.dumps(evaluate(path, n_act, 100 + s, tasks, args.episodes)), flush=True)


if __name__ == "__main__":
    main()
