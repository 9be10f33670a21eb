"""Why reach-v3 fails when it fails: how close the end effector that success measures gets.

Meta-World's reach success is the TCP within 5 cm of the goal; its scripted expert drives the
*hand* position (obs[0:3]), which sits 4.5 cm above the TCP, onto the goal, so the
demonstrations succeed with a few millimetres to spare. This plays a trained policy on
held-out reach episodes and prints, per episode, the closest the hand got to the goal and the
closest the TCP got (the env's own ``near_object`` distance).

    python scripts/bench/metaworld_reach_margin.py runs/quickstart/run/model [--episodes 30] [--task reach-v3]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from mode_policy import MoDEPolicy
from mode_policy.envs.metaworld import INSTRUCTIONS, MAX_EPISODE_STEPS, MetaWorldEnv, eval_seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--episodes", type=int, default=30)
    parser.add_argument("--task", default="reach-v3")
    args = parser.parse_args()
    policy = MoDEPolicy.from_pretrained(args.model)
    torch.manual_seed(0)
    n, task = args.episodes, args.task
    envs = [MetaWorldEnv(task) for _ in range(n)]
    obs = np.stack([env.reset(eval_seed(task, i)) for i, env in enumerate(envs)])
    goal = obs[:, 36:39].copy()
    hand_best, tcp_best, success = np.full(n, np.inf), np.full(n, np.inf), np.zeros(n, bool)
    for _ in range(MAX_EPISODE_STEPS):
        with torch.no_grad():
            actions = policy.select_action(
                {"observation.state": torch.from_numpy(obs), "task": [INSTRUCTIONS[task]] * n}
            ).numpy()
        steps = [env.step(a) for env, a in zip(envs, actions)]
        obs = np.stack([s[0] for s in steps])
        success |= np.array([s[2] for s in steps])
        hand_best = np.minimum(hand_best, np.linalg.norm(obs[:, 0:3] - goal, axis=1))
        tcp_best = np.minimum(tcp_best, [s[4]["near_object"] for s in steps])
    print(f"{task}: success {success.mean():.2f} over {n} episodes (threshold: TCP within 0.05 m)")
    for i in range(n):
        print(
            f"episode {i:2d}  success {success[i]!s:5}  closest hand {hand_best[i]:.3f} m  closest TCP {tcp_best[i]:.3f} m"
        )


if __name__ == "__main__":
    main()
