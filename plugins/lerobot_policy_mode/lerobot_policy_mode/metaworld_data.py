"""Meta-World demonstrations shaped like LeRobot's Meta-World env, for ``lerobot-eval --env.type=metaworld``.

::

    python -m lerobot_policy_mode.metaworld_data --tasks button-press-topdown-v3,drawer-close-v3 \\
        --episodes 10 --image_size 64 --out data/mw_lerobot

Each episode runs LeRobot's own ``MetaworldEnv`` (``lerobot[metaworld]``: the ``corner2`` camera
as LeRobot places and flips it, ``agent_pos``, LeRobot's task descriptions) with Meta-World's
scripted expert acting on the full state, and keeps the episodes the expert solves. LeRobot's
writer stores them as ``observation.state`` (the env's 4-d ``agent_pos``), ``observation.images.top``
(the 480 px frame resized to ``image_size`` with :func:`~lerobot_policy_mode.images.resize_square`,
the function the policy applies to the env's frames) and ``action``, with the env's instruction
as the task. A policy trained on it is evaluated with::

    lerobot-eval --policy.path=... --env.type=metaworld --env.task=button-press-topdown-v3 \\
        --rename_map='{"observation.image": "observation.images.top"}'

Seeds start at 100000 (``lerobot-eval`` seeds its episodes from 1000), so evaluation episodes are
not training episodes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mode_policy.errors import ConfigError, ModePolicyError
from mode_policy.fileio import replacing

from .images import resize_square

CAMERA_KEY = "observation.images.top"
"""The dataset's camera; LeRobot's env calls it ``observation.image`` (hence ``--rename_map``)."""
STATE_NAMES = ["hand_x", "hand_y", "hand_z", "gripper"]
FIRST_SEED = 100_000
FPS = 80  # LeRobot's MetaworldEnv config


def run_episode(task: str, seed: int, image_size: int) -> dict[str, Any]:
    """One expert episode in LeRobot's env: states (T, 4), images (T, S, S, 3) uint8, actions (T, 4),
    the instruction and whether the expert succeeded."""
    from lerobot.envs.metaworld import MetaworldEnv

    env = MetaworldEnv(task=task, obs_type="pixels_agent_pos")
    env._ensure_env()  # the Meta-World env inside: the expert acts on its full 39-d observation
    inner, last = env._env, {}

    def capture(method: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            out = method(*args, **kwargs)
            last["obs"] = out[0]
            return out

        return call

    inner.reset, inner.step = capture(inner.reset), capture(inner.step)
    obs, _ = env.reset(seed=seed)
    raw = last["obs"]
    states, images, actions, success = [], [], [], False
    for _ in range(inner.max_path_length):
        action = np.clip(env.expert_policy.get_action(raw), -1.0, 1.0).astype(np.float32)
        frame = torch.from_numpy(np.ascontiguousarray(obs["pixels"]))  # (480, 480, 3)
        images.append(resize_square(frame, image_size).numpy() if image_size else frame.numpy())
        states.append(np.asarray(obs["agent_pos"], dtype=np.float32))
        actions.append(action)
        obs, _, terminated, truncated, info = env.step(action)
        raw = last["obs"]
        if info.get("is_success"):
            success = True
            break
        if terminated or truncated:
            break
    description = env.task_description
    env.close()
    return {
        "task": task,
        "seed": seed,
        "instruction": description,
        "success": success,
        "states": np.stack(states),
        "images": np.stack(images),
        "actions": np.stack(actions),
    }


def _episode(args: tuple[str, int, int]) -> dict[str, Any]:
    return run_episode(*args)


def write_demos(
    tasks: list[str], episodes: int, out: Path, image_size: int = 64, workers: int = 1, overwrite: bool = False
) -> dict[str, Any]:
    """``episodes`` successful expert episodes per task in ``out`` (a LeRobotDataset v3.0 written by
    LeRobot); returns a summary (episodes kept and tried per task)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    if episodes < 1 or not tasks:
        raise ConfigError("need at least one task and one episode per task")
    size = image_size or 480
    features = {
        "observation.state": {"dtype": "float32", "shape": (4,), "names": STATE_NAMES},
        CAMERA_KEY: {"dtype": "video", "shape": (size, size, 3), "names": ["height", "width", "channels"]},
        "action": {"dtype": "float32", "shape": (4,), "names": ["dx", "dy", "dz", "grip"]},
    }
    summary: dict[str, Any] = {"root": str(out), "image_size": size, "tasks": {}}
    context = multiprocessing.get_context("spawn")  # every worker creates its own rendering context
    with replacing(out, overwrite) as tmp, context.Pool(max(1, workers)) as pool:
        dataset = LeRobotDataset.create(
            repo_id=f"local/{out.name}", fps=FPS, features=features, root=tmp, robot_type="sawyer", use_videos=True
        )
        for t, task in enumerate(tasks):
            kept = tried = 0
            seeds = iter(range(FIRST_SEED + 1000 * t, FIRST_SEED + 1000 * (t + 1)))
            while kept < episodes and tried < 3 * episodes:
                batch = [(task, next(seeds), image_size) for _ in range(min(max(1, workers), episodes - kept))]
                for result in pool.imap(_episode, batch):
                    tried += 1
                    if not result["success"] or kept >= episodes:
                        continue
                    for state, image, action in zip(result["states"], result["images"], result["actions"]):
                        dataset.add_frame(
                            {
                                "observation.state": state,
                                CAMERA_KEY: image,
                                "action": action,
                                "task": result["instruction"],
                            }
                        )
                    dataset.save_episode()
                    kept += 1
            summary["tasks"][task] = {"kept": kept, "tried": tried}
            if kept < episodes:
                raise ModePolicyError(f"the expert solved only {kept} of {tried} {task} episodes")
        dataset.finalize()
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lerobot_policy_mode.metaworld_data", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--tasks", required=True, help="comma-separated Meta-World v3 tasks (e.g. reach-v3)")
    parser.add_argument("--episodes", type=int, default=10, help="successful expert episodes per task")
    parser.add_argument("--image_size", type=int, default=64, help="stored camera size (0: LeRobot's 480 px)")
    parser.add_argument("--out", required=True, help="dataset folder to write")
    parser.add_argument("--workers", type=int, default=1, help="episodes rendered in parallel")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = parser.parse_args(argv)
    try:
        summary = write_demos(
            [t.strip() for t in args.tasks.split(",") if t.strip()],
            args.episodes,
            Path(args.out),
            args.image_size,
            args.workers,
            args.overwrite,
        )
    except ModePolicyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
