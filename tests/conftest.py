"""Shared test settings: one torch thread (tiny models are overhead-bound and
the 2-core machines are shared), fixed seeds."""

import pytest
import torch

from mode_policy.envs.rendering import setup_headless_rendering

setup_headless_rendering()  # before any test module imports a simulator (mujoco reads MUJOCO_GL once)


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
