"""Where a CALVIN policy's block lifts fail: approach, grasp or lift.

Plays ``lift_<color>_block_table`` from the initial scenes of the restricted chains (every block
lying on the table in a scene is lifted once, from that scene, with the evaluation's 360-step
limit and task oracle) and prints, per attempt, success, steps, and at the policy's first
gripper close: the step, the tool centre point's horizontal distance to the target block and to
the nearest other block, and its height above the block; then a summary (docs/results/calvin.md
uses it).

    python scripts/checks/calvin_lift_failures.py RUN_OR_MODEL_DIR [--attempts 30] [--official_sampling]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from mode_policy import MoDEPolicy
from mode_policy.envs.calvin import (
    TASK_ORACLE_SPEC,
    VAL_INSTRUCTIONS,
    calvin_observation,
    get_env_state_for_initial_condition,
    get_sequences,
    to_env_action,
)
from mode_policy.envs.calvin_scripted import SCRIPTED_TASKS
from mode_policy.envs.calvin_sim import import_calvin_env, make_calvin_env
from mode_policy.evaluation.calvin import CALVIN_OFFICIAL, EP_LEN
from mode_policy.evaluation.parallel import with_sampling
from mode_policy.evaluation.protocol import eval_mode
from mode_policy.evaluation.sampling import with_sampling_settings
from mode_policy.training.run_dir import RunDir

COLORS = ("red", "blue", "pink")
#: CALVIN's scene_obs: sliding door, drawer, button, switch, lightbulb, green light, then
#: position (3) and Euler angles (3) of the red, blue and pink blocks
BLOCK_POS = {c: slice(6 + 6 * i, 9 + 6 * i) for i, c in enumerate(COLORS)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a run directory or a saved model directory")
    parser.add_argument("--attempts", type=int, default=30)
    parser.add_argument("--chains", type=int, default=200, help="restricted chains whose initial scenes are used")
    parser.add_argument("--action_steps", type=int, default=0, help="0: the policy's own n_action_steps")
    parser.add_argument(
        "--official_sampling", action="store_true", help="5 steps, sigma_min 1.0 (as mode-policy eval --env calvin)"
    )
    parser.add_argument("--json", default="", help="also write the attempts to this file")
    args = parser.parse_args()

    torch.set_num_threads(1)
    policy = with_sampling(MoDEPolicy.from_pretrained(RunDir.model_dir(args.model)), 0, args.action_steps)
    if args.official_sampling:
        policy, _ = with_sampling_settings(
            policy, num_inference_steps=CALVIN_OFFICIAL.num_inference_steps, sigma_min=CALVIN_OFFICIAL.sigma_min
        )
    scene_in_state = policy.config.state_dim == 39
    oracle = import_calvin_env().Tasks(TASK_ORACLE_SPEC)
    env = make_calvin_env([], scene="D")
    rows: list[dict] = []
    with eval_mode(policy):
        for condition, _ in get_sequences(args.chains, list(SCRIPTED_TASKS)):
            for color in [c for c in COLORS if condition[f"{c}_block"] == "table"]:
                if len(rows) >= args.attempts:
                    break
                task = f"lift_{color}_block_table"
                env.reset(*get_env_state_for_initial_condition(condition))
                torch.manual_seed(len(rows))
                policy.reset()
                obs, start = env.get_obs(), env.get_info()
                tcp, blocks, grip = [], [], []  # per step: (3,), {color: (3,)}, gripper command
                success = False
                for _ in range(EP_LEN):
                    batch = calvin_observation(obs, VAL_INSTRUCTIONS[task], scene_in_state=scene_in_state)
                    action = to_env_action(policy.select_action(batch))
                    tcp.append(np.asarray(obs["robot_obs"][:3]))
                    blocks.append({c: np.asarray(obs["scene_obs"][BLOCK_POS[c]]) for c in COLORS})
                    grip.append(action[6])
                    obs, _, _, info = env.step(action)
                    if oracle.get_task_info_for_set(start, info, {task}):
                        success = True
                        break
                row = {"color": color, "success": success, "steps": len(tcp), "first_close": None}
                closes = [t for t in range(1, len(grip)) if grip[t] < 0 <= grip[t - 1]]
                if closes:
                    t = closes[0]
                    dist = {c: float(np.linalg.norm(tcp[t][:2] - blocks[t][c][:2])) for c in COLORS}
                    row["first_close"] = {
                        "step": t,
                        "target_xy_m": dist[color],
                        "other_xy_m": min(d for c, d in dist.items() if c != color),
                        "above_block_m": float(tcp[t][2] - blocks[t][color][2]),
                    }
                row["block_rise_m"] = float(max(b[color][2] for b in blocks) - blocks[0][color][2])
                rows.append(row)
                print(json.dumps(row), flush=True)
            if len(rows) >= args.attempts:
                break
    closes = [r["first_close"] for r in rows if r["first_close"]]
    near = [c for c in closes if c["target_xy_m"] < 0.02]
    other = [c for c in closes if c["target_xy_m"] >= 0.02 and c["other_xy_m"] < 0.02]
    print(
        f"{sum(r['success'] for r in rows)}/{len(rows)} lifts; first close at step "
        f"{np.median([c['step'] for c in closes]):.0f} (median), "
        f"{np.median([c['target_xy_m'] for c in closes]) * 100:.1f} cm from the target block (median): "
        f"within 2 cm of it {len(near)}, of another block {len(other)}, of none {len(closes) - len(near) - len(other)}"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
