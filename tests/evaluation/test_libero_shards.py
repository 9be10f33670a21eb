"""Resumable and sharded LIBERO evaluation: the merged result is the one-process result however
the waves were dealt over processes or interrupted (a policy that samples, on a fake LIBERO
whose success depends on the sampled actions; and, where LIBERO is installed, two real worker
processes)."""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fakes import ScriptedPolicy, needs_libero

from mode_policy.evaluation import libero as libero_eval
from mode_policy.evaluation.libero import UNIT_STRIDE, evaluate_libero, libero_waves
from mode_policy.evaluation.parallel import evaluate_sharded, follow_log, shard
from mode_policy.evaluation.unit_log import UnitLog


class SamplingPolicy(torch.nn.Module):
    """Random actions (B, 7) from torch's global generator, which the protocol seeds per wave."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(image_keys=[], image_size=0, state_dim=8, action_dim=7)

    def reset(self) -> None:
        pass

    def select_action(self, batch: dict) -> torch.Tensor:
        return torch.randn(len(batch["task"]), 7)


class LuckyEnv:
    """LIBERO's env interface; a rollout succeeds when an action's first value exceeds 1.2."""

    def seed(self, seed: int) -> None:
        pass

    def reset(self) -> None:
        pass

    def set_init_state(self, state: np.ndarray) -> dict:
        return self._obs()

    def step(self, action: np.ndarray):
        return self._obs(), 0.0, bool(action[0] > 0.999), {}  # actions arrive clipped to [-1, 1]

    def close(self) -> None:
        pass

    @staticmethod
    def _obs() -> dict:
        return {
            "robot0_eef_pos": np.zeros(3),
            "robot0_eef_quat": np.array([0, 0, 0, 1.0]),
            "robot0_gripper_qpos": np.zeros(2),
        }


@pytest.fixture
def fake_libero(monkeypatch: pytest.MonkeyPatch) -> None:
    tasks = [
        SimpleNamespace(name=f"task{i}", language=f"do thing {i}", problem_folder="p", bddl_file="b") for i in range(3)
    ]
    suite = SimpleNamespace(n_tasks=3, get_task=lambda i: tasks[i])
    monkeypatch.setattr(libero_eval, "import_libero", lambda: SimpleNamespace(get_libero_path=lambda key: "/x"))
    monkeypatch.setattr(libero_eval, "_load_suite", lambda lib, name: suite)
    monkeypatch.setattr(libero_eval, "load_init_states", lambda lib, s, task_id: np.zeros((50, 4)))
    monkeypatch.setattr(libero_eval, "make_libero_env", lambda *args, **kwargs: LuckyEnv())
    monkeypatch.setattr(libero_eval, "image_convention", lambda: "opengl")


def _run(**kwargs):
    return evaluate_libero(
        SamplingPolicy(),
        "fake",
        n_rollouts_per_task=5,
        max_steps=3,
        num_settle_steps=1,
        tasks=[0, 2],
        num_envs=2,
        progress=False,
        **kwargs,
    )


def _score(result):
    per_task = {t: (r.successes, r.episodes, r.extra["episode_lengths"]) for t, r in result.per_task.items()}
    return result.metrics, per_task


def test_waves_and_units() -> None:
    assert libero_waves([0, 2], 5, 2) == [[0, 1], [2, 3], [4], [2000, 2001], [2002, 2003], [2004]]
    assert shard(libero_waves([0, 2], 5, 2), 1, 2) == [2, 3, 2000, 2001, 2004]
    assert UNIT_STRIDE == 1000


def test_shards_and_interruptions_give_the_same_result(fake_libero, tmp_path: Path) -> None:
    whole = _run()
    successes = [r.successes for r in whole.per_task.values()]
    assert 0 < sum(successes) < 10  # the outcome depends on the sampled actions
    waves = libero_waves([0, 2], 5, 2)
    log = UnitLog(tmp_path / "log", {"what": "test"})
    first = _run(units=shard(waves, 0, 3), log=log, log_writer="w0")  # shard 0 of 3
    assert first.settings["rollouts_played_now"] == 4 and sum(r.episodes for r in first.per_task.values()) == 4
    _run(units=shard(waves, 1, 3), log=log, log_writer="w1")  # shard 1 of 3; shard 2 never ran ("killed")
    resumed = _run(log=UnitLog(tmp_path / "log", {"what": "test"}))
    assert resumed.settings["rollouts_played_now"] == 2  # only the missing waves ([4], [2004])
    assert _score(resumed) == _score(whole)

    path = tmp_path / "log" / "units-w1.jsonl"  # killed while writing the last rollout of wave [2002, 2003]
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:10])
    again = _run(log=UnitLog(tmp_path / "log", {"what": "test"}))
    assert again.settings["rollouts_played_now"] == 2  # the wave is played again whole
    assert _score(again) == _score(whole)


def test_torchrun_ranks_share_the_waves(fake_libero, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = _run()
    groups = libero_waves([0, 2], 5, 2)
    kwargs = dict(suite="fake", n_rollouts_per_task=5, max_steps=3, num_settle_steps=1, tasks=[0, 2], num_envs=2)
    log = UnitLog(tmp_path / "log", {})
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert (
        evaluate_sharded(evaluate_libero, "units", SamplingPolicy(), None, log, groups, progress=False, **kwargs)
        is None
    )  # a rank > 0 only plays its share
    assert sorted(log.records()) == shard(groups, 1, 2)
    monkeypatch.setenv("RANK", "0")
    merged = evaluate_sharded(evaluate_libero, "units", SamplingPolicy(), None, log, groups, progress=False, **kwargs)
    assert _score(merged) == _score(whole) and merged.settings["ranks"] == 2
    assert sorted(p.name for p in (tmp_path / "log").glob("units-*")) == [
        "units-rank0-main.jsonl",
        "units-rank1-main.jsonl",
    ]


@needs_libero
@pytest.mark.slow
def test_two_real_worker_processes_match_one(tmp_path: Path) -> None:
    """Two spawned workers on the real libero_goal (two tasks, short rollouts) log every rollout."""
    kwargs = dict(suite="libero_goal", n_rollouts_per_task=3, max_steps=2, num_settle_steps=1, tasks=[0, 1], num_envs=2)
    policy = ScriptedPolicy(np.zeros(7))
    loader = functools.partial(ScriptedPolicy, np.zeros(7))
    groups = libero_waves([0, 1], 3, 2)
    two = evaluate_sharded(
        evaluate_libero,
        "units",
        policy,
        loader,
        UnitLog(tmp_path / "two", {}),
        groups,
        workers=2,
        progress=False,
        **kwargs,
    )
    one = evaluate_libero(policy, log=UnitLog(tmp_path / "one", {}), progress=False, **kwargs)
    assert _score(two) == _score(one) and sum(t.episodes for t in two.per_task.values()) == 6
    assert len(list((tmp_path / "two").glob("units-worker*.jsonl"))) == 2


def _save_tiny_libero_model(folder: Path) -> None:
    """A tiny LIBERO-shaped policy (8-d state, 7-d actions, learned goals) saved to ``folder``."""
    from mode_policy import MoDEPolicy, get_preset

    cfg = get_preset(
        "tiny",
        state_dim=8,
        action_dim=7,
        goal_dim=8,
        goal_encoder={"type": "task", "tasks": [f"do thing {i}" for i in range(3)], "dim": 8},
    )
    policy = MoDEPolicy(cfg)
    policy.set_normalization(
        {"action": {"min": [-1.0] * 7, "max": [1.0] * 7}, "observation.state": {"mean": [0.0] * 8, "std": [1.0] * 8}}
    )
    policy.save_pretrained(folder)


def test_cli_eval_logs_rollouts_and_resumes(fake_libero, tmp_path: Path) -> None:
    import json

    from mode_policy.cli.pipeline import EvalOptions, run_eval

    _save_tiny_libero_model(tmp_path / "model")
    out = tmp_path / "eval_info.json"
    opts = EvalOptions(path=str(tmp_path / "model"), env="libero", suite="libero_goal", episodes=2, out=str(out))
    assert run_eval(opts) == 0
    first = json.loads(out.read_text())
    assert first["settings"]["rollouts_played_now"] == 6 and first["overall"]["episodes"] == 6
    assert json.loads((tmp_path / "eval_info.rollouts" / "settings.json").read_text())["suite"] == "libero_goal"
    opts.overwrite = True  # replace the first result (a rerun without it is refused)
    assert run_eval(opts) == 0
    again = json.loads(out.read_text())
    assert again["settings"]["rollouts_played_now"] == 0 and again["per_task"] == first["per_task"]


def test_cli_eval_plays_only_the_tasks_named(fake_libero, tmp_path: Path) -> None:
    import json

    from mode_policy.cli.pipeline import EvalOptions, run_eval

    _save_tiny_libero_model(tmp_path / "model")
    out = tmp_path / "eval_info.json"
    opts = EvalOptions(
        path=str(tmp_path / "model"), env="libero", suite="libero_goal", episodes=2, out=str(out), libero_tasks="2,0"
    )
    assert run_eval(opts) == 0
    result = json.loads(out.read_text())
    assert result["overall"]["episodes"] == 4 and len(result["per_task"]) == 2
    assert json.loads((tmp_path / "eval_info.rollouts" / "settings.json").read_text())["tasks"] == [2, 0]


def test_cli_eval_step_limit_is_used_and_logged(fake_libero, tmp_path: Path) -> None:
    import json

    from mode_policy.cli.pipeline import EvalOptions, run_eval
    from mode_policy.errors import ConfigError

    _save_tiny_libero_model(tmp_path / "model")
    out = tmp_path / "eval_info.json"
    opts = EvalOptions(
        path=str(tmp_path / "model"), env="libero", suite="libero_goal", episodes=2, out=str(out), libero_max_steps=4
    )
    assert run_eval(opts) == 0
    result = json.loads(out.read_text())
    assert result["settings"]["max_steps"] == 4
    lengths = [n for task in result["per_task"].values() for n in task["episode_lengths"]]
    assert lengths and max(lengths) <= 4
    assert json.loads((tmp_path / "eval_info.rollouts" / "settings.json").read_text())["max_steps"] == 4
    with pytest.raises(ConfigError, match="libero_max_steps"):
        run_eval(EvalOptions(path=str(tmp_path / "model"), env="libero", suite="libero_goal", libero_max_steps=-1))


class _Workers:
    """An ``AsyncResult`` stand-in: every wait lets one of two workers log its next unit."""

    def __init__(self, log: UnitLog, units: list[int]) -> None:
        self.log, self.left = log, list(units)

    def ready(self) -> bool:
        return not self.left

    def wait(self, timeout: float) -> None:
        self.log.append(f"worker{len(self.left) % 2}", {"unit": self.left.pop(0)})


def test_one_progress_bar_counts_every_workers_rollouts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    log = UnitLog(tmp_path / "log", {})
    log.append("worker0", {"unit": 7})  # played by an earlier, interrupted run
    log.append("rank1-worker0", {"unit": 9})  # another torchrun rank's
    follow_log(_Workers(log, [1, 2, 3, 4]), log, {1, 2, 3, 4}, "2 workers", "rollout", poll_s=0)
    err = capsys.readouterr().err
    assert "4/4" in err and "5/4" not in err and "6/4" not in err  # both workers' units, nobody else's
