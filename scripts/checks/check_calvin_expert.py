"""How often the scripted CALVIN expert completes each subtask, in the real simulator
(needs calvin_env: scripts/install/install_calvin.sh; physics only, no rendering).

    python scripts/checks/check_calvin_expert.py [--tries 20] [--tasks open_drawer,...] [--chains 0] [--seed 0]

For each subtask: ``--tries`` attempts, each from a protocol initial scene (blocks nudged as
in the recorded demonstrations) where the subtask applies, checked by calvin_env's task
oracle within 360 steps; ``place_in_drawer`` is tried after ``lift_<color>_block_table``.
With ``--chains K`` it then plays the first K chains of the restricted evaluation list
(``get_sequences(K, SCRIPTED_TASKS)``, the chains ``mode-policy eval --calvin_tasks scripted``
plays) and prints CALVIN's chain score: what a policy that imitated the expert perfectly would get.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from mode_policy.envs.calvin import (
    TASK_ORACLE_SPEC,
    get_env_state_for_initial_condition,
    get_sequences,
    initial_conditions,
    valid_chain,
)
from mode_policy.envs.calvin_record import EP_LEN, jittered_scene
from mode_policy.envs.calvin_scripted import SCRIPTED_TASKS, CalvinExpert, check_tasks, run_subtask
from mode_policy.envs.calvin_sim import import_calvin_env, make_calvin_env
from mode_policy.evaluation.calvin import count_success


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tries", type=int, default=20)
    parser.add_argument("--tasks", default=",".join(SCRIPTED_TASKS))
    parser.add_argument("--chains", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tasks = check_tasks([t for t in args.tasks.split(",") if t])
    env = make_calvin_env([])
    oracle = import_calvin_env().Tasks(TASK_ORACLE_SPEC)
    rng = np.random.default_rng(args.seed)
    expert = CalvinExpert(env, rng)
    scenes = initial_conditions()
    start, steps, worst = time.perf_counter(), 0, 1.0
    for task in tasks:
        before = ["lift_red_block_table"] if task == "place_in_drawer" else []
        candidates = [s for s in scenes if valid_chain(s, [*before, task])]
        wins, lengths = 0, []
        for _ in range(args.tries):
            env.reset(*jittered_scene(candidates[rng.integers(len(candidates))], rng))
            if before and not run_subtask(env, expert, oracle, before[0], EP_LEN)[0]:
                lengths.append(EP_LEN)
                continue
            ok, n = run_subtask(env, expert, oracle, task, EP_LEN)
            wins += ok
            lengths.append(n)
            steps += n
        worst = min(worst, wins / args.tries)
        print(f"{task:26s} {wins:3d}/{args.tries}  mean steps {np.mean(lengths):5.1f}", flush=True)
    elapsed = time.perf_counter() - start
    print(f"{steps} subtask steps in {elapsed:.0f} s ({steps / elapsed:.0f} steps/s incl. resets and the oracle)")
    if args.chains:
        completed = []
        for condition, chain in get_sequences(args.chains, SCRIPTED_TASKS):
            env.reset(*get_env_state_for_initial_condition(condition))
            done = 0
            for task in chain:
                if not run_subtask(env, expert, oracle, task, EP_LEN)[0]:
                    break
                done += 1
            completed.append(done)
        rates = " | ".join(f"{i + 1}: {r:.1%}" for i, r in enumerate(count_success(completed)))
        print(f"expert on {args.chains} restricted chains: avg. len {np.mean(completed):.3f}   success at {rates}")
    return 0 if worst > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
