"""Scripted policies and a fake CALVIN simulator for the evaluation tests."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from mode_policy.envs.rendering import setup_headless_rendering

setup_headless_rendering()  # before the Meta-World wrapper below imports mujoco

from mode_policy.envs import metaworld as mw  # noqa: E402
from mode_policy.envs.calvin import CALVIN_TASKS, TASK_ORACLE_SPEC  # noqa: E402


def libero_available() -> bool:
    if importlib.util.find_spec("libero") is None:
        return False
    from mode_policy.envs.libero import import_libero

    import_libero()  # installed but broken: fail loudly rather than skip
    return True


needs_libero = pytest.mark.skipif(not libero_available(), reason="the `libero` package is not installed")


class ScriptedPolicy(torch.nn.Module):
    """A fixed action for every env (as a chunk or one step at a time); records what it is given."""

    def __init__(self, action: Any, state_dim: int = 8, image_keys: tuple[str, ...] = (), horizon: int = 1) -> None:
        super().__init__()
        self.action = torch.as_tensor(np.asarray(action), dtype=torch.float32)
        self.config = SimpleNamespace(
            state_dim=state_dim,
            action_dim=len(self.action),
            horizon=horizon,
            n_obs_steps=1,
            n_action_steps=1,
            image_keys=list(image_keys),
            image_size=0,
        )
        self.batches: list[dict] = []
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def select_action(self, batch: dict) -> torch.Tensor:
        self.batches.append(batch)
        return self.action.expand(len(batch["task"]), -1).clone()  # (B, A)

    def predict_action_chunk(self, batch: dict) -> torch.Tensor:
        self.batches.append(batch)
        return self.action.expand(len(batch["task"]), self.config.horizon, -1).clone()  # (B, H, A)


class ExpertChunkPolicy(ScriptedPolicy):
    """Meta-World's scripted expert as a chunk policy (deterministic; succeeds on easy tasks)."""

    def __init__(self) -> None:
        super().__init__(np.zeros(mw.ACTION_DIM), state_dim=mw.OBS_DIM)
        self.tasks = {instruction: task for task, instruction in mw.INSTRUCTIONS.items()}

    def predict_action_chunk(self, batch: dict) -> torch.Tensor:
        states = batch["observation.state"][:, -1].double().numpy()  # (B, 39)
        actions = [mw.ScriptedExpert(self.tasks[text])(s) for text, s in zip(batch["task"], states)]
        return torch.as_tensor(np.stack(actions))[:, None]  # (B, 1, 4)


#: Subtasks the fake CALVIN policy "solves" (3 steps each); every other subtask fails.
SOLVABLE = frozenset(CALVIN_TASKS[::2])
STEPS_TO_SOLVE = 3


class FakeCalvinEnv:
    """calvin_env's interface with a step counter as the whole state."""

    def __init__(self) -> None:
        self.t = 0
        self.resets: list[tuple[np.ndarray, np.ndarray]] = []

    def reset(self, robot_obs: np.ndarray, scene_obs: np.ndarray) -> None:
        self.resets.append((robot_obs, scene_obs))
        self.t = 0

    def get_obs(self) -> dict:
        return {"robot_obs": np.full(15, float(self.t)), "scene_obs": np.zeros(24), "rgb_obs": {}}

    def get_info(self) -> dict:
        return {"t": self.t}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, dict]:
        assert action.shape == (7,)
        self.t += 1
        return self.get_obs(), 0.0, False, self.get_info()


class FakeTasks:
    """The task oracle: a SOLVABLE subtask is done STEPS_TO_SOLVE steps after it was given."""

    def __init__(self, spec: dict) -> None:
        assert spec is TASK_ORACLE_SPEC

    def get_task_info_for_set(self, start: dict, info: dict, tasks: set[str]) -> set[str]:
        (task,) = tasks
        return set(tasks) if task in SOLVABLE and info["t"] - start["t"] >= STEPS_TO_SOLVE else set()
