"""Meta-World evaluation: held-out seeds, batching that does not change outcomes, per-task
time shares, videos, and argument errors."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from fakes import ExpertChunkPolicy, ScriptedPolicy, mw

from mode_policy.errors import ConfigError
from mode_policy.evaluation.metaworld import evaluate_metaworld, policy_cameras


def _expert_outcomes(task: str, n: int, max_steps: int) -> tuple[int, list[int]]:
    """Successes and episode lengths of the scripted expert (from the observation alone, as the
    chunk policy plays it) on the first n evaluation seeds."""
    batch = mw.MetaWorldBatch([task] * n, [mw.eval_seed(task, i) for i in range(n)], max_steps=max_steps)
    for _ in range(max_steps):
        batch.step(batch.expert_actions(aim_tcp=False))
    return int(batch.success.sum()), batch.steps.tolist()


def test_results_match_the_expert_and_do_not_depend_on_batching(metaworld_result) -> None:
    result = metaworld_result  # 2 tasks x 2 episodes in batches of 3: the batches mix tasks
    assert result.env == "metaworld" and list(result.per_task) == ["reach-v3", "push-v3"]
    for task, r in result.per_task.items():
        successes, steps = _expert_outcomes(task, 2, 60)
        assert (r.successes, r.episodes) == (successes, 2)
        assert r.extra["mean_steps"] == pytest.approx(np.mean(steps))
        assert r.instruction == mw.INSTRUCTIONS[task]
    assert result.per_task["reach-v3"].successes == 2  # the expert reaches within 60 steps
    one_batch = evaluate_metaworld(
        ExpertChunkPolicy(), ["reach-v3", "push-v3"], episodes_per_task=2, batch_size=100, max_steps=60, progress=False
    )
    assert {t: (r.successes, r.extra) for t, r in one_batch.per_task.items()} == {
        t: (r.successes, r.extra) for t, r in result.per_task.items()
    }
    # shared batches: the task shares add up to the batches' time, within the total
    shares = sum(r.wall_s for r in result.per_task.values())
    assert 0 < shares <= result.wall_s
    assert result.settings == {"episodes_per_task": 2, "batch_size": 3, "max_steps": 60, "n_action_steps": 1}


def test_videos_are_written_for_the_first_episodes(tmp_path: Path) -> None:
    result = evaluate_metaworld(
        ExpertChunkPolicy(),
        ["reach-v3"],
        episodes_per_task=2,
        max_steps=8,
        video_dir=tmp_path,
        videos_per_task=1,
        progress=False,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reach-v3_ep000.mp4"]
    with av.open(str(tmp_path / "reach-v3_ep000.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == result.per_task["reach-v3"].extra["mean_steps"] == 8
    assert frames[0].shape == (128, 128, 3)


def test_policy_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="39-d states and 4-d actions"):
        evaluate_metaworld(ScriptedPolicy(np.zeros(7)), ["reach-v3"], episodes_per_task=1, progress=False)
    with pytest.raises(ConfigError, match="unknown Meta-World task"):
        evaluate_metaworld(ExpertChunkPolicy(), ["fly-v3"], episodes_per_task=1, progress=False)
    camera_policy = ScriptedPolicy(np.zeros(4), state_dim=39, image_keys=("observation.images.top",))
    with pytest.raises(ConfigError, match="not a Meta-World camera"):
        policy_cameras(camera_policy)
    camera_policy.config.image_keys = ["observation.images.corner"]
    with pytest.raises(ConfigError, match="image_size is not set"):
        policy_cameras(camera_policy)
    camera_policy.config.image_size = 32
    assert policy_cameras(camera_policy) == {"observation.images.corner": "corner"}


class NoisyChunkPolicy(ScriptedPolicy):
    """Small random actions drawn from torch's generator, as a diffusion policy draws its noise."""

    def predict_action_chunk(self, batch: dict) -> torch.Tensor:
        self.batches.append(batch)
        return 0.1 * torch.randn(len(batch["task"]), self.config.horizon, self.config.action_dim)


def test_the_policys_noise_is_seeded_so_a_rerun_gives_the_same_result() -> None:
    runs = []
    for torch_seed in (1, 2):  # whatever the caller's generator state
        policy = NoisyChunkPolicy(np.zeros(mw.ACTION_DIM), state_dim=mw.OBS_DIM)
        torch.manual_seed(torch_seed)
        evaluate_metaworld(policy, ["reach-v3"], 2, seed=3, batch_size=2, max_steps=3, progress=False)
        runs.append(torch.stack([b["observation.state"] for b in policy.batches]))
    assert len(runs[0]) == 3 and not torch.equal(runs[0][0], runs[0][2])  # the noisy actions moved the arm
    assert torch.equal(runs[0], runs[1])  # the same noise, so the same states were reached
