"""Resumable and sharded CALVIN evaluation: the result does not depend on how the chains were
split over processes or interrupted (a policy that samples, on a fake simulator whose oracle
depends on the sampled actions; and, where calvin_env is installed, two real worker processes)."""

from __future__ import annotations

import importlib.util
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fakes import FakeCalvinEnv

from mode_policy.errors import ConfigError
from mode_policy.evaluation import calvin as calvin_eval
from mode_policy.evaluation.calvin import evaluate_calvin
from mode_policy.evaluation.unit_log import UnitLog


class SamplingPolicy(torch.nn.Module):
    """Random actions from torch's global generator (which the protocol seeds per chain)."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(image_keys=[], state_dim=15, action_dim=7)
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def reset(self) -> None:
        pass

    def select_action(self, batch: dict) -> torch.Tensor:
        return torch.randn(1, 7)


class ActionEnv(FakeCalvinEnv):
    def step(self, action: np.ndarray):
        obs, reward, done, info = super().step(action)
        return obs, reward, done, {**info, "a0": float(action[0])}


class LuckyTasks:
    """The oracle: a subtask is solved when a sampled action's first value exceeds 0.95."""

    def __init__(self, spec: dict) -> None:
        pass

    def get_task_info_for_set(self, start: dict, info: dict, tasks: set[str]) -> set[str]:
        return set(tasks) if info.get("a0", 0.0) > 0.95 else set()


@pytest.fixture
def lucky(monkeypatch):
    monkeypatch.setattr(calvin_eval, "import_calvin_env", lambda: SimpleNamespace(Tasks=LuckyTasks))


def _run(log=None, chain_ids=None, writer="main"):
    return evaluate_calvin(
        SamplingPolicy(),
        num_sequences=12,
        ep_len=4,
        progress=False,
        env=ActionEnv(),
        chain_ids=chain_ids,
        log=log,
        log_writer=writer,
        num_inference_steps=None,
        sigma_min=None,
    )


def _score(result):
    return result.metrics, {t: (r.successes, r.episodes) for t, r in result.per_task.items()}


def test_shards_and_interruptions_give_the_same_result(lucky, tmp_path):
    whole = _run()
    assert 0 < whole.metrics["avg_len"] < 5  # the outcome depends on the sampled actions
    log = UnitLog(tmp_path / "sharded", {"what": "test"})
    _run(log, chain_ids=range(0, 12, 3), writer="w0")  # shard 0 of 3
    _run(log, chain_ids=range(1, 12, 3), writer="w1")  # shard 1 of 3; shard 2 never ran ("killed")
    resumed = _run(UnitLog(tmp_path / "sharded", {"what": "test"}))
    assert resumed.settings["chains_played_now"] == 4  # only the missing shard was played
    assert _score(resumed) == _score(whole)
    again = _run(UnitLog(tmp_path / "sharded", {"what": "test"}))
    assert again.settings["chains_played_now"] == 0 and _score(again) == _score(whole)


def test_a_torn_last_record_is_played_again(lucky, tmp_path):
    log = UnitLog(tmp_path / "log", {"what": "test"})
    _run(log, chain_ids=[0, 1])
    path = tmp_path / "log" / "units-main.jsonl"
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # killed while writing chain 1
    result = _run(UnitLog(tmp_path / "log", {"what": "test"}), chain_ids=[0, 1])
    assert result.settings["chains_played_now"] == 1
    assert _score(result) == _score(_run(chain_ids=[0, 1]))


def test_a_log_of_another_evaluation_is_refused(tmp_path):
    log = UnitLog(tmp_path / "log", {"seed": 0})
    assert not (tmp_path / "log").exists()  # nothing on disk before the first unit finishes
    log.start()
    UnitLog(tmp_path / "log", {"seed": 1})  # a log without a finished unit refuses nothing
    log.append("main", {"unit": 0})
    with pytest.raises(ConfigError, match="differs in: seed"):
        UnitLog(tmp_path / "log", {"seed": 1})
    assert json.loads((tmp_path / "log" / "settings.json").read_text()) == {"seed": 0}


@pytest.mark.skipif(importlib.util.find_spec("calvin_env") is None, reason="calvin_env is not installed")
def test_two_real_worker_processes_match_one(tmp_path):
    from mode_policy import MoDEPolicy, get_preset
    from mode_policy.envs.calvin import VAL_INSTRUCTIONS
    from mode_policy.evaluation.parallel import evaluate_calvin_in_workers

    tasks = sorted(set(VAL_INSTRUCTIONS.values()))
    cfg = get_preset(
        "tiny", state_dim=15, action_dim=7, goal_dim=8, goal_encoder={"type": "task", "tasks": tasks, "dim": 8}
    )
    policy = MoDEPolicy(cfg)
    policy.set_normalization(
        {"action": {"min": [-1.0] * 7, "max": [1.0] * 7}, "observation.state": {"mean": [0.0] * 15, "std": [1.0] * 15}}
    )
    policy.save_pretrained(tmp_path / "model")
    kwargs = dict(num_sequences=4, ep_len=3, renderer="tiny")
    two = evaluate_calvin_in_workers(policy, tmp_path / "model", UnitLog(tmp_path / "two", {}), 2, range(4), **kwargs)
    one = evaluate_calvin(
        MoDEPolicy.from_pretrained(tmp_path / "model"), log=UnitLog(tmp_path / "one", {}), progress=False, **kwargs
    )
    assert _score(two) == _score(one)
    assert len(list((tmp_path / "two").glob("units-worker*.jsonl"))) == 2
