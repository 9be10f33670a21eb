"""WindowSampler on hand-built episodes: history clamped to the episode start, actions padded
past its end, and camera frames gathered with the same indices, whatever holds them."""

from __future__ import annotations

import numpy as np
import torch

from mode_policy.data.frame_cache import DiskFrames
from mode_policy.data.windows import EpisodeData, WindowSampler, take_frames


def _episodes(images: dict) -> EpisodeData:
    bounds = np.array([[0, 4], [4, 10]])
    start = torch.tensor([0] * 4 + [4] * 6)
    end = torch.tensor([4] * 4 + [10] * 6)
    state = torch.arange(10, dtype=torch.float32)[:, None].repeat(1, 2)  # (10, 2): row i holds i
    action = -torch.arange(10, dtype=torch.float32)[:, None]  # (10, 1)
    return EpisodeData(state, action, start, end, torch.tensor([0] * 4 + [1] * 6), ["a", "b"], bounds, images)


def test_take_frames_is_advanced_indexing():
    frames = torch.randint(0, 255, (10, 3, 5, 3), dtype=torch.uint8)
    index = torch.tensor([[0, 0, 1], [7, 8, 9]])
    assert torch.equal(take_frames(frames, index), frames[index])


def test_windows_clamp_history_pad_actions_and_gather_frames(tmp_path):
    frames = torch.randint(0, 255, (10, 3, 5, 3), dtype=torch.uint8)
    frames.numpy().tofile(tmp_path / "frames.u8")
    for images in (frames, DiskFrames(tmp_path / "frames.u8", 10, 3, 5)):
        sampler = WindowSampler(_episodes({"observation.images.c": images}), n_obs_steps=3, horizon=3)
        batch = sampler.batch(torch.tensor([0, 5, 9]))
        history = torch.tensor([[0, 0, 0], [4, 4, 5], [7, 8, 9]])
        assert torch.equal(batch["observation.state"][..., 0], history.float())
        assert torch.equal(batch["observation.images.c"], frames[history])
        assert torch.equal(batch["action"][..., 0], -torch.tensor([[0, 1, 2], [5, 6, 7], [9, 9, 9]]).float())
        assert batch["action_is_pad"].tolist() == [[False] * 3, [False] * 3, [False, True, True]]
        assert batch["task"] == ["a", "b", "b"]
