"""Where a policy leaves the tool centre point on Meta-World reach episodes it fails.

Rolls out ``--episodes`` held-out episodes of a reach task (the evaluation's seeds and step
limit) and prints, per episode, success, steps, the TCP's final distance to the goal and to the
puck, and the goal, puck and hand positions, so a failure can be told apart as "aimed at another
point" or "stopped short of the radius" (docs/results/mt50.md uses it).

    python scripts/checks/metaworld_reach_failures.py RUN_OR_MODEL_DIR [--task reach-v3] [--action_steps 5]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from mode_policy import MoDEPolicy
from mode_policy.constants import STATE_KEY, TASK_KEY
from mode_policy.envs import metaworld as mw
from mode_policy.evaluation.parallel import with_sampling
from mode_policy.training.run_dir import RunDir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a run directory or a saved model directory")
    parser.add_argument("--task", default="reach-v3")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed (as mode-policy eval --seed)")
    parser.add_argument("--action_steps", type=int, default=0, help="0: the policy's own n_action_steps")
    args = parser.parse_args()

    policy = with_sampling(MoDEPolicy.from_pretrained(RunDir.model_dir(args.model)), 0, args.action_steps)
    policy.eval()
    cfg = policy.config
    n_act = args.action_steps or cfg.n_action_steps  # actions executed per chunk
    seeds = [mw.eval_seed(args.task, i, args.seed) for i in range(args.episodes)]
    envs = mw.MetaWorldBatch([args.task] * args.episodes, seeds, max_steps=mw.MAX_EPISODE_STEPS)
    obs = envs.reset()
    start = obs.copy()  # (N, 39): the puck at [4:7], the goal at [36:39]
    chunk = np.zeros((args.episodes, cfg.horizon, cfg.action_dim), dtype=np.float32)
    torch.manual_seed(args.seed)
    t = 0
    while not envs.all_done and t < mw.MAX_EPISODE_STEPS:
        if t % n_act == 0:
            active = np.flatnonzero(~envs.done)
            batch = {TASK_KEY: [envs.instructions[i] for i in active], STATE_KEY: torch.as_tensor(obs[active][:, None])}
            with torch.no_grad():
                chunk[active] = policy.predict_action_chunk(batch).float().numpy()  # (n, H, A)
        obs, _, _ = envs.step(chunk[:, t % n_act])
        t += 1
    for i, env in enumerate(envs.envs):
        tcp, goal, puck = env.tcp_center, start[i, 36:39], start[i, 4:7]
        print(
            f"{i:3d} success={bool(envs.success[i])!s:5} steps={int(envs.steps[i]):3d} "
            f"|tcp-goal|={np.linalg.norm(tcp - goal):.3f} |tcp-puck|={np.linalg.norm(tcp - puck):.3f} "
            f"goal={np.round(goal, 2)} puck={np.round(puck, 2)} hand={np.round(obs[i, :3], 2)}"
        )
    envs.close()


if __name__ == "__main__":
    main()
