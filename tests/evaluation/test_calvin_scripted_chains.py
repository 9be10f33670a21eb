"""CALVIN evaluation of a state policy on chains restricted to the scripted subtasks: the scene
in the state, the restricted chain list, torchrun ranks, and ``mode-policy eval --env calvin
--calvin_tasks scripted`` end to end (resumed) on the fake simulator."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from fakes import FakeCalvinEnv, FakeTasks, ScriptedPolicy

from mode_policy.envs.calvin import get_env_state_for_initial_condition, get_sequences
from mode_policy.envs.calvin_scripted import SCRIPTED_TASKS
from mode_policy.errors import ConfigError
from mode_policy.evaluation import calvin as calvin_eval
from mode_policy.evaluation.calvin import evaluate_calvin
from mode_policy.evaluation.parallel import distributed_rank, evaluate_sharded
from mode_policy.evaluation.unit_log import UnitLog


def test_state_with_the_scene(fake_calvin) -> None:
    """A policy reading 39 values gets robot_obs then scene_obs; 15: robot_obs; others are refused."""
    wide = ScriptedPolicy(np.zeros(7), state_dim=39)
    result = evaluate_calvin(wide, num_sequences=1, ep_len=2, progress=False, env=fake_calvin)
    assert result.settings["scene_in_state"] is True
    state = wide.batches[0]["observation.state"]
    assert state.shape == (1, 39)
    np.testing.assert_array_equal(state[0, 15:].numpy(), fake_calvin.get_obs()["scene_obs"])
    narrow = ScriptedPolicy(np.zeros(7), state_dim=15)
    evaluate_calvin(narrow, num_sequences=1, ep_len=2, progress=False, env=fake_calvin)
    assert narrow.batches[0]["observation.state"].shape == (1, 15)
    with pytest.raises(ConfigError, match="reads a state of 20 values"):
        evaluate_calvin(ScriptedPolicy(np.zeros(7), state_dim=20), num_sequences=1, env=fake_calvin)


def test_restricted_chains_are_played(fake_calvin) -> None:
    policy = ScriptedPolicy(np.zeros(7), state_dim=15)
    result = evaluate_calvin(policy, num_sequences=4, ep_len=3, progress=False, env=fake_calvin, tasks=SCRIPTED_TASKS)
    chains = get_sequences(4, SCRIPTED_TASKS)
    assert result.settings["tasks"] == list(SCRIPTED_TASKS)
    assert set(result.per_task) <= set(SCRIPTED_TASKS)
    for (_robot, scene), (condition, _) in zip(fake_calvin.resets, chains):
        np.testing.assert_array_equal(scene, get_env_state_for_initial_condition(condition)[1])
    with pytest.raises(ConfigError, match="holds 4 chains, num_sequences is 5"):
        evaluate_calvin(policy, num_sequences=5, env=fake_calvin, sequences=chains)


def test_distributed_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed_rank() == (0, 1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"RANK=3 must be in \[0, WORLD_SIZE=2\)"):
        distributed_rank()


def test_torchrun_ranks_share_the_chains(fake_calvin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kwargs = dict(num_sequences=6, ep_len=4, env=fake_calvin, num_inference_steps=None, sigma_min=None)
    whole = evaluate_calvin(ScriptedPolicy(np.zeros(7), state_dim=15), progress=False, **kwargs)
    log = UnitLog(tmp_path / "log", {})
    groups = [[i] for i in range(6)]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    policy = ScriptedPolicy(np.zeros(7), state_dim=15)
    assert evaluate_sharded(evaluate_calvin, "chain_ids", policy, None, log, groups, progress=False, **kwargs) is None
    assert sorted(log.records()) == [1, 3, 5]
    monkeypatch.setenv("RANK", "0")
    merged = evaluate_sharded(evaluate_calvin, "chain_ids", policy, None, log, groups, progress=False, **kwargs)
    assert merged.metrics == whole.metrics and merged.settings["ranks"] == 2
    assert {t: (r.successes, r.episodes) for t, r in merged.per_task.items()} == {
        t: (r.successes, r.episodes) for t, r in whole.per_task.items()
    }


@pytest.fixture
def saved_policy(tmp_path: Path) -> Path:
    from mode_policy import MoDEPolicy, get_preset
    from mode_policy.envs.calvin import VAL_INSTRUCTIONS

    tasks = sorted(set(VAL_INSTRUCTIONS.values()))
    cfg = get_preset(
        "tiny", state_dim=39, action_dim=7, goal_dim=8, goal_encoder={"type": "task", "tasks": tasks, "dim": 8}
    )
    policy = MoDEPolicy(cfg)
    policy.set_normalization(
        {"action": {"min": [-1.0] * 7, "max": [1.0] * 7}, "observation.state": {"mean": [0.0] * 39, "std": [1.0] * 39}}
    )
    policy.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_cli_eval_on_the_scripted_chains_resumes(
    saved_policy: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mode_policy.cli.pipeline import EvalOptions, run_eval

    monkeypatch.setattr(calvin_eval, "import_calvin_env", lambda: SimpleNamespace(Tasks=FakeTasks))
    monkeypatch.setattr(calvin_eval, "make_calvin_env", lambda *args, **kwargs: FakeCalvinEnv())
    out = tmp_path / "eval" / "eval_info.json"
    opts = EvalOptions(path=str(saved_policy), env="calvin", calvin_tasks="scripted", episodes=3, out=str(out))
    assert run_eval(opts) == 0
    assert "CALVIN scene D, chains of the scripted subtasks: avg. len" in capsys.readouterr().out
    info = json.loads(out.read_text())
    assert info["settings"]["tasks"] == list(SCRIPTED_TASKS) and info["settings"]["scene_in_state"] is True
    assert info["settings"]["sampling"] == {"num_inference_steps": 5, "sigma_min": 1.0}  # the official preset
    settings = json.loads((tmp_path / "eval" / "eval_info.chains" / "settings.json").read_text())
    assert settings["tasks"] == list(SCRIPTED_TASKS) and settings["chains"] == 3
    with pytest.raises(ConfigError, match="exists \\(pass --overwrite"):
        run_eval(opts)  # the result of the first run is not replaced unasked
    opts.overwrite = True
    assert run_eval(opts) == 0  # a rerun continues from the log: nothing left to play
    again = json.loads(out.read_text())
    assert again["settings"]["chains_played_now"] == 0 and again["metrics"] == info["metrics"]
    with pytest.raises(ConfigError, match="holds results of another evaluation"):
        run_eval(EvalOptions(path=str(saved_policy), env="calvin", episodes=3, out=str(out), overwrite=True))  # all 34


def test_cli_eval_with_the_policys_own_sampling(
    saved_policy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mode_policy.cli.pipeline import EvalOptions, run_eval

    monkeypatch.setattr(calvin_eval, "import_calvin_env", lambda: SimpleNamespace(Tasks=FakeTasks))
    monkeypatch.setattr(calvin_eval, "make_calvin_env", lambda *args, **kwargs: FakeCalvinEnv())
    out = tmp_path / "eval_info.json"
    run_eval(
        EvalOptions(path=str(saved_policy), env="calvin", episodes=1, out=str(out), calvin_official_sampling=False)
    )
    assert json.loads(out.read_text())["settings"]["sampling"] == {}  # nothing replaced
    run_eval(
        EvalOptions(
            path=str(saved_policy),
            env="calvin",
            episodes=1,
            out=str(tmp_path / "b.json"),
            calvin_official_sampling=False,
            steps=3,
        )
    )
    assert json.loads((tmp_path / "b.json").read_text())["settings"]["sampling"] == {"num_inference_steps": 3}
