"""Meta-World under a simulated inference delay (mode_policy.evaluation.realtime): when chunks take
over in each mode, the discontinuity measure, the resumable grid, the plot and the command."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fakes import ScriptedPolicy, mw

from mode_policy import MoDEPolicy, get_preset
from mode_policy.cli.main import main as cli
from mode_policy.errors import ConfigError
from mode_policy.evaluation.realtime import (
    action_jumps,
    evaluate_delayed,
    plot_switches,
    rollout_delayed,
    run_realtime_grid,
)
from mode_policy.model.guidance import GuidanceSettings


class ExpertPlanPolicy(ScriptedPolicy):
    """Chunks of 6: the scripted expert's action at the observed state, plus 0.01 per action index
    (so a chunk's actions differ); a prefix's first ``delay`` actions are kept, as a guided policy
    keeps them. Records every call's prefix length and delay."""

    def __init__(self) -> None:
        super().__init__(np.zeros(mw.ACTION_DIM), state_dim=mw.OBS_DIM)
        self.config = SimpleNamespace(**{**vars(self.config), "horizon": 6, "n_action_steps": 3})
        self.tasks = {instruction: task for task, instruction in mw.INSTRUCTIONS.items()}
        self.calls: list[tuple[int, int]] = []

    def predict_action_chunk(self, batch: dict, prefix=None, delay=0, guidance=None) -> torch.Tensor:
        states = batch["observation.state"].double().numpy()  # (B, 39)
        expert = np.stack([mw.ScriptedExpert(self.tasks[t])(s) for t, s in zip(batch["task"], states)])
        chunk = torch.as_tensor(expert[:, None] + 0.01 * np.arange(6)[None, :, None]).float()  # (B, 6, 4)
        self.calls.append((0 if prefix is None else prefix.shape[1], delay))
        if prefix is not None:
            chunk[:, :delay] = prefix[:, :delay]
        return chunk


def test_the_modes_switch_chunks_when_they_should():
    policy = ExpertPlanPolicy()
    tasks, seeds = ["reach-v3", "push-v3"], [mw.eval_seed("reach-v3", 0), mw.eval_seed("push-v3", 0)]
    sync = rollout_delayed(policy, tasks, seeds, delay=0, mode="sync", max_steps=20)
    naive0 = rollout_delayed(policy, tasks, seeds, delay=0, mode="naive", max_steps=20)
    assert np.array_equal(sync["actions"], naive0["actions"]) and sync["switches"] == [3, 6, 9, 12, 15, 18]
    naive = rollout_delayed(policy, tasks, seeds, delay=2, mode="naive", max_steps=20)
    assert naive["switches"] == [5, 8, 11, 14, 17] and set(naive["delays"]) == {2}
    # during the delay the env runs the current chunk on (its actions 3 and 4), then the new chunk's
    # action 2: index offsets 0.03, 0.04, then 0.02 above the expert's action at the request
    offsets = naive["actions"][0, 3:6, 0] - naive["actions"][0, 2, 0]
    np.testing.assert_allclose(offsets[:2], [0.01, 0.02], atol=1e-6)
    policy.calls.clear()
    rtc = rollout_delayed(policy, tasks, seeds, delay=2, mode="rtc", max_steps=20)
    assert rtc["switches"] == naive["switches"] and policy.calls[0] == (0, 0)  # the first chunk: no prefix
    assert set(policy.calls[1:]) == {(3, 2)}  # the current chunk's last 3 actions, 2 of them frozen


def test_action_jumps_split_switches_from_the_rest():
    actions = np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 3.0], [0.0, 3.0]])
    switch, inside = action_jumps(actions, steps=4, switches=[2, 7])
    assert switch == [1.0] and inside == [1.0, 0.5]  # step 2: |(0, 2)| mean 1; steps 1 and 3
    assert action_jumps(actions, steps=3, switches=[3]) == ([], [1.0, 1.0])


def test_evaluate_delayed_reports_success_and_discontinuity():
    policy = ExpertPlanPolicy()
    result = evaluate_delayed(policy, ["reach-v3"], 2, "rtc", episodes_per_task=2, max_steps=30, progress=False)
    task = result.per_task["reach-v3"]
    assert task.episodes == 2 and task.extra["mean_delay"] == 2.0 and task.extra["switches"] > 0
    assert task.extra["mean_ticks"] == task.extra["mean_steps"] + 2  # the first chunk's wait
    assert result.settings["mode"] == "rtc" and result.settings["guidance"]["method"] == "replace"
    assert set(result.metrics) == {"switch_jump", "inside_jump", "mean_steps", "mean_ticks"}
    sync = evaluate_delayed(policy, ["reach-v3"], 2, "sync", episodes_per_task=2, max_steps=30, progress=False)
    assert sync.settings["guidance"] is None
    assert sync.metrics["mean_ticks"] > sync.metrics["mean_steps"] + 2  # it waits for every chunk
    with pytest.raises(ConfigError, match="execute_horizon \\+ delay <= horizon"):
        evaluate_delayed(policy, ["reach-v3"], 4, "rtc", episodes_per_task=1, progress=False)


def test_the_grid_resumes_and_refuses_other_settings(tmp_path):
    policy = ExpertPlanPolicy()
    kwargs = dict(tasks=["reach-v3"], delays=[0, 2], modes=["sync", "rtc"], episodes_per_task=1, max_steps=12)
    first = run_realtime_grid(policy, tmp_path, progress=False, log=lambda line: None, **kwargs)
    assert sorted(p.name for p in (tmp_path / "cells").iterdir()) == [
        "d0_rtc.json",
        "d0_sync.json",
        "d2_rtc.json",
        "d2_sync.json",
    ]
    calls = len(policy.calls)
    lines = []
    again = run_realtime_grid(policy, tmp_path, progress=False, log=lines.append, **kwargs)
    assert len(policy.calls) == calls and all("done before" in line for line in lines)  # nothing ran again
    assert {k: r.to_dict()["overall"] for k, r in again.items()} == {
        k: r.to_dict()["overall"] for k, r in first.items()
    }
    summary = (tmp_path / "summary.md").read_text()
    assert "| 2 | rtc |" in summary and "| reach-v3 |" in summary
    cell = json.loads((tmp_path / "cells" / "d2_rtc.json").read_text())
    assert cell["settings"]["delay"] == 2 and cell["per_task"]["reach-v3"]["switch_jump"] is not None
    with pytest.raises(ConfigError, match="use another --out"):
        run_realtime_grid(policy, tmp_path, progress=False, **{**kwargs, "episodes_per_task": 2})
    with pytest.raises(ConfigError, match="use another --out"):
        run_realtime_grid(policy, tmp_path, progress=False, guidance=GuidanceSettings(schedule="linear"), **kwargs)
    pigdm = {**kwargs, "modes": ["rtc"], "guidance": GuidanceSettings("pigdm")}  # beside the others
    assert list(run_realtime_grid(policy, tmp_path, progress=False, log=lines.append, **pigdm)) == [
        "d0_rtc_pigdm",
        "d2_rtc_pigdm",
    ]
    rows = [line for line in (tmp_path / "summary.md").read_text().splitlines() if line.startswith("| 2 |")]
    assert [row.split(" | ")[1] for row in rows] == ["sync", "rtc", "rtc (pigdm)"]


def test_plot_switches_draws_a_png(tmp_path):
    path = plot_switches(ExpertPlanPolicy(), "reach-v3", 2, tmp_path / "plot.png", steps=15)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_realtime_command_runs_a_saved_policy(tmp_path, capsys):
    torch.manual_seed(0)
    tasks = ["reach-v3"]
    cfg = get_preset(
        "tiny",
        state_dim=mw.OBS_DIM,
        action_dim=mw.ACTION_DIM,
        goal_dim=8,
        goal_encoder={"type": "task", "tasks": [mw.INSTRUCTIONS[t] for t in tasks], "dim": 8},
    )
    MoDEPolicy(cfg).save_pretrained(tmp_path / "model")
    out = tmp_path / "rtc"
    args = ["realtime", str(tmp_path / "model"), "--out", str(out), "--tasks", "reach-v3", "--episodes", "1"]
    args += ["--max_steps", "10", "--action_steps", "2", "--progress=false"]
    assert cli([*args, "--delays", "0,2"]) == 0
    assert (out / "trajectory.png").exists() and len(list((out / "cells").iterdir())) == 6
    assert "summary:" in capsys.readouterr().out
    assert cli([*args, "--delays", "3"]) == 2  # 2 + 3 > horizon 4
    assert "asynchronous execution needs" in capsys.readouterr().err
