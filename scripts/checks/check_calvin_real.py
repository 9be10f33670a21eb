"""CALVIN against the real simulator (needs calvin_env: scripts/install/install_calvin.sh).

    python scripts/checks/check_calvin_real.py [--cameras] [--scene D] [--renderer egl|tiny] [--expert-chains N]

Builds the environment from calvin_env's own configs (no dataset), runs `evaluate_calvin`
with a scripted policy on chain 0 of the official get_sequences(10) list ("turn_on_led",
"push_pink_block_left", ...): the policy presses the LED button, reading the button's place
from the simulator, and does nothing for any other instruction. The task oracle must count
exactly one completed instruction. Then it prints simulator steps/s with no camera and with
both cameras, measured side by side. With ``--expert-chains N`` (scene D) it then plays the
first N chains restricted to the scripted subtasks (what ``mode-policy eval --calvin_tasks
scripted`` plays) with the scripted expert as the policy, through the same evaluation loop,
and prints its score: the ceiling of a policy trained on the scripted demonstrations.
Exits non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from mode_policy.envs.calvin import (
    CAMERAS,
    VAL_INSTRUCTIONS,
    get_env_state_for_initial_condition,
    get_sequences,
)
from mode_policy.envs.calvin_scripted import SCRIPTED_TASKS, ExpertPolicy
from mode_policy.envs.calvin_sim import make_calvin_env
from mode_policy.evaluation.calvin import evaluate_calvin, format_chain_success

BUTTON_TASKS = {VAL_INSTRUCTIONS["turn_on_led"], VAL_INSTRUCTIONS["turn_off_led"]}


class ButtonPresser(torch.nn.Module):
    """Presses the LED button for an LED instruction (above it, down, back up); holds still
    for every other instruction."""

    def __init__(self, env, image_keys: list[str]) -> None:
        super().__init__()
        self.config = argparse.Namespace(image_keys=image_keys)
        table = next(o for o in env.scene.fixed_objects if o.name == "table")
        button = np.array(env.p.getLinkState(table.uid, table.get_info()["links"]["button_link"])[0])
        self.waypoints = [button + [0, 0, 0.06], button + [0, 0, -0.03], button + [0, 0, 0.08]]
        self.next = 0

    def reset(self) -> None:
        self.next = 0

    def select_action(self, batch: dict) -> torch.Tensor:
        if batch["task"][0] not in BUTTON_TASKS:
            return torch.tensor([[0, 0, 0, 0, 0, 0, 1.0]])
        tcp = batch["observation.state"][0, :3].double().numpy()
        delta = self.waypoints[self.next] - tcp
        if np.linalg.norm(delta) < 0.01 and self.next < len(self.waypoints) - 1:
            self.next += 1
        move = np.clip(delta / 0.02, -1.0, 1.0)  # relative actions: 2 cm per unit
        return torch.tensor(np.r_[move, 0, 0, 0, -1.0][None], dtype=torch.float32)


def steps_per_second(env, steps: int = 60) -> float:
    condition, _ = get_sequences(10)[0]
    env.reset(*get_env_state_for_initial_condition(condition))
    action = np.array([0, 0, 0, 0, 0, 0, 1.0])
    start = time.perf_counter()
    for _ in range(steps):
        env.step(action)
    return steps / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cameras", action="store_true", help="render both cameras during the chain")
    parser.add_argument("--scene", default="D")
    parser.add_argument("--renderer", default="egl", choices=["egl", "tiny"])
    parser.add_argument("--expert-chains", type=int, default=0, help="play N restricted chains with the expert")
    args = parser.parse_args()

    keys = list(CAMERAS) if args.cameras else []
    env = make_calvin_env(keys, scene=args.scene, renderer=args.renderer)
    policy = ButtonPresser(env, keys)
    result = evaluate_calvin(policy, num_sequences=10, chain_ids=[0], env=env, progress=False)
    print(format_chain_success(result))
    for task, r in result.per_task.items():
        print(f"  {task}: {r.successes}/{r.episodes}  ({r.instruction!r}, {r.wall_s:.1f} s)")
    counts = {task: (r.successes, r.episodes) for task, r in result.per_task.items()}
    ok = result.metrics["chain_length_counts"] == [0, 1, 0, 0, 0, 0] and counts == {
        "push_pink_block_left": (0, 1),
        "turn_on_led": (1, 1),
    }
    print("oracle count:", "OK (1 instruction completed)" if ok else f"WRONG: {counts}")

    physics = make_calvin_env([], scene=args.scene)
    rendered = env if args.cameras else make_calvin_env(list(CAMERAS), scene=args.scene, renderer=args.renderer)
    fast, slow = steps_per_second(physics), steps_per_second(rendered)
    print(
        f"steps/s: physics only {fast:.0f}, static + gripper cameras ({args.renderer}) {slow:.1f}; "
        f"ratio {fast / slow:.1f}x"
    )
    if args.expert_chains:
        start = time.perf_counter()
        scored = evaluate_calvin(
            ExpertPolicy(physics), num_sequences=args.expert_chains, tasks=SCRIPTED_TASKS, env=physics, progress=True
        )
        print(
            f"scripted expert on {args.expert_chains} restricted chains: {format_chain_success(scored)}   "
            f"({time.perf_counter() - start:.0f} s)"
        )
        ok = ok and scored.metrics["avg_len"] > 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
