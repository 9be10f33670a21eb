"""Shared test settings: one torch thread (tiny models are overhead-bound and
the 2-core machines are shared), fixed seeds."""

import os

import pytest
import torch

# One thread in this process and in every subprocess a test starts (training picks its thread
# count from the free cores otherwise, which would make seeded runs depend on the machine's load).
os.environ.setdefault("OMP_NUM_THREADS", "1")

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
