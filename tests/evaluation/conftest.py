"""Fixtures: one small result per benchmark (the LIBERO one runs the real simulator, once per
session), and calvin_env replaced by the fake of fakes.py."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from fakes import ExpertChunkPolicy, FakeCalvinEnv, FakeTasks, ScriptedPolicy, libero_available

from mode_policy.evaluation import calvin as calvin_eval
from mode_policy.evaluation.calvin import evaluate_calvin
from mode_policy.evaluation.libero import evaluate_libero
from mode_policy.evaluation.metaworld import evaluate_metaworld


@pytest.fixture
def fake_calvin(monkeypatch: pytest.MonkeyPatch) -> FakeCalvinEnv:
    monkeypatch.setattr(calvin_eval, "import_calvin_env", lambda: SimpleNamespace(Tasks=FakeTasks))
    return FakeCalvinEnv()


@pytest.fixture(scope="session")
def metaworld_result():
    policy = ExpertChunkPolicy()
    return evaluate_metaworld(
        policy, ["reach-v3", "push-v3"], episodes_per_task=2, batch_size=3, max_steps=60, progress=False
    )


@pytest.fixture(scope="session")
def libero_result():
    if not libero_available():
        pytest.skip("the `libero` package is not installed")
    policy = ScriptedPolicy(np.zeros(7))
    return evaluate_libero(
        policy, "libero_goal", n_rollouts_per_task=2, max_steps=3, num_settle_steps=1, tasks=[1], progress=False
    ), policy


@pytest.fixture
def calvin_result(fake_calvin: FakeCalvinEnv):
    policy = ScriptedPolicy(np.zeros(7), state_dim=15)
    return evaluate_calvin(policy, num_sequences=10, ep_len=5, progress=False, env=fake_calvin), policy
