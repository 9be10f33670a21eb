"""Image observations for Meta-World end to end: demos with cameras -> LeRobot videos ->
in-memory camera tensors and windows -> a tiny image policy trains -> evaluation renders."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mode_policy.envs.rendering import setup_headless_rendering

setup_headless_rendering()  # before the Meta-World wrapper (via demos) imports mujoco

from mode_policy.data.reader import DatasetReader  # noqa: E402
from mode_policy.data.windows import WindowSampler, dataset_cameras, load_episodes  # noqa: E402
from mode_policy.envs.metaworld import MetaWorldEnv, demo_seed  # noqa: E402
from mode_policy.envs.metaworld_demos import DEMO_FEATURES, demo_features, generate_demos, run_expert_episode  # noqa: E402
from mode_policy.model.config import get_preset  # noqa: E402

TASK = "reach-v3"
SIZE = 32
KEY = "observation.images.corner"


def _can_render() -> bool:
    try:
        env = MetaWorldEnv(TASK, seed=demo_seed(TASK, 0))
        env.render("corner", SIZE)
        env.close()
        return True
    except Exception:  # noqa: BLE001 - no usable GL backend on this machine
        return False


pytestmark = pytest.mark.skipif(not _can_render(), reason="offscreen rendering unavailable")


@pytest.fixture(scope="module")
def image_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("img") / "demos"
    return generate_demos(root, [TASK], 2, max_steps=150, progress=False, cameras=["corner"], image_size=SIZE)


def test_demo_videos_match_the_rendered_observations(image_dataset):
    ds = DatasetReader(image_dataset)
    assert ds.video_keys == [KEY]
    assert ds.features[KEY]["dtype"] == "video" and ds.features[KEY]["shape"] == [SIZE, SIZE, 3]
    assert ds.num_episodes == 2
    for i, extra in enumerate(ds.episode_extra):
        frames = ds.video_frames(KEY, i)
        lo, hi = ds.episode_bounds[i]
        assert frames.shape == (hi - lo, SIZE, SIZE, 3) and frames.dtype == np.uint8
        env = MetaWorldEnv(TASK, seed=extra["seed"])  # the seeded initial observation
        first = env.render("corner", SIZE).astype(np.float64)
        env.close()
        err0 = np.abs(frames[0].astype(np.float64) - first).mean()
        err_last = np.abs(frames[-1].astype(np.float64) - first).mean()
        # H.264 (crf 18, 4:2:0 chroma) at 32 px: ~6 grey levels mean error, mostly colour
        assert err0 < 10.0, f"lossy codec error too large: {err0:.2f}"
        assert err0 < err_last  # frame 0 is the initial observation, not a later one


def test_cameras_do_not_change_the_state_data(image_dataset):
    ds = DatasetReader(image_dataset)
    seed = ds.episode_extra[0]["seed"]
    plain = run_expert_episode(TASK, seed, max_steps=150)
    pictured = run_expert_episode(TASK, seed, max_steps=150, cameras=["corner"], image_size=SIZE)
    for key in DEMO_FEATURES:
        np.testing.assert_array_equal(plain.frames[key], pictured.frames[key])
    lo, hi = ds.episode_bounds[0]
    np.testing.assert_array_equal(ds.column("observation.state")[lo:hi], plain.frames["observation.state"])
    assert pictured.frames[KEY].shape == (hi - lo, SIZE, SIZE, 3)
    with pytest.raises(ValueError, match="unknown Meta-World camera"):
        demo_features(["nope"])


def test_loader_decodes_once_and_windows_index_history(image_dataset):
    assert dataset_cameras(image_dataset) == {KEY: (SIZE, SIZE, 3)}
    plain = load_episodes(image_dataset)
    assert plain.images == {} and plain.camera_shapes == {KEY: (SIZE, SIZE, 3)}
    data = load_episodes(image_dataset, image_keys=[KEY], progress=False)
    images = data.images[KEY]
    assert images.shape == (data.num_frames, SIZE, SIZE, 3) and images.dtype == torch.uint8
    ds = DatasetReader(image_dataset)
    lo, hi = ds.episode_bounds[1]
    np.testing.assert_array_equal(images[lo:hi].numpy(), ds.video_frames(KEY, 1))
    with pytest.raises(ValueError, match="no camera feature"):
        load_episodes(image_dataset, image_keys=["observation.images.gripperPOV"])

    sampler = WindowSampler(data, n_obs_steps=3, horizon=4)
    frames = torch.tensor([lo, lo + 1, lo + 5, hi - 1])
    batch = sampler.batch(frames)
    assert batch[KEY].shape == (4, 3, SIZE, SIZE, 3) and batch[KEY].dtype == torch.uint8
    assert batch["observation.state"].shape == (4, 3, 39)
    expected = [[lo, lo, lo], [lo, lo, lo + 1], [lo + 3, lo + 4, lo + 5], [hi - 3, hi - 2, hi - 1]]
    for b, idx in enumerate(expected):
        torch.testing.assert_close(batch[KEY][b], images[idx])
        torch.testing.assert_close(batch["observation.state"][b], data.state[idx])


def test_tiny_image_policy_trains_and_evaluates_with_rendering(image_dataset, tmp_path, monkeypatch):
    from mode_policy.evaluation.metaworld import evaluate_metaworld
    from mode_policy.policy import MoDEPolicy
    from mode_policy.training.config import TrainConfig
    from mode_policy.training.loop import train

    cfg = TrainConfig(
        dataset=str(image_dataset),
        output_dir=str(tmp_path / "run"),
        preset="tiny",
        steps=2,
        batch_size=8,
        log_every=1,
        checkpoint_every=2,
        warmup_steps=1,
        progress=False,
        language="task",
        policy=get_preset("tiny", goal_dim=16, image_keys=[KEY], vision_width=8, n_obs_steps=2),
    )
    run = train(cfg)
    policy = MoDEPolicy.from_pretrained(run / "model")
    assert policy.config.image_keys == [KEY] and policy.config.image_size == SIZE
    saved = json.loads((run / "config.json").read_text())["policy"]
    assert saved["image_keys"] == [KEY] and saved["image_size"] == SIZE

    calls = []
    seen_batches = []
    real_render = MetaWorldEnv.render
    real_predict = policy.predict_action_chunk

    def render(self, camera_name="corner2", size=128):
        calls.append((camera_name, size))
        return real_render(self, camera_name, size)

    def predict(batch, noise=None):
        seen_batches.append({k: v for k, v in batch.items() if torch.is_tensor(v)})
        return real_predict(batch, noise)

    monkeypatch.setattr(MetaWorldEnv, "render", render)
    monkeypatch.setattr(policy, "predict_action_chunk", predict)
    result = evaluate_metaworld(policy, [TASK], episodes_per_task=1, max_steps=12, progress=False)
    assert result.overall.episodes == 1
    # chunks of 4 with a 2-step history: the initial image, then steps 3, 4, 7, 8 (not 11: no re-plan at 12)
    assert calls == [("corner", SIZE)] * 5
    assert len(seen_batches) == 3
    for batch in seen_batches:
        assert batch[KEY].shape == (1, 2, SIZE, SIZE, 3) and batch[KEY].dtype == torch.uint8
        assert batch["observation.state"].shape == (1, 2, 39)
    assert torch.equal(seen_batches[0][KEY][:, 0], seen_batches[0][KEY][:, 1])  # clamped at the start

    # a state-only policy never renders
    calls.clear()
    state_run = train(replace(cfg, output_dir=str(tmp_path / "state"), policy=get_preset("tiny", goal_dim=16)))
    state_policy = MoDEPolicy.from_pretrained(state_run / "model")
    assert state_policy.config.image_keys == []
    evaluate_metaworld(state_policy, [TASK], episodes_per_task=1, max_steps=8, progress=False)
    assert calls == []


def test_image_preset_needs_cameras_and_uses_the_datasets(image_dataset):
    from mode_policy.training.build import build_policy, select_image_keys
    from mode_policy.training.config import TrainConfig

    cfg = TrainConfig(
        dataset=str(image_dataset), preset="cpu-image", language="task", policy=get_preset("cpu-image", goal_dim=16)
    )
    assert select_image_keys(cfg, [KEY]) == [KEY]  # the preset's placeholder cameras are replaced
    assert get_preset("cpu-image").image_keys  # an image preset
    with pytest.raises(ValueError, match="no video or image features"):
        select_image_keys(cfg, [])
    with pytest.raises(ValueError, match="not camera features"):
        select_image_keys(
            TrainConfig(dataset="d", policy=get_preset("cpu", image_keys=["observation.images.topview"])), [KEY]
        )
    assert select_image_keys(TrainConfig(dataset="d", preset="cpu"), [KEY]) == []

    data = load_episodes(image_dataset, image_keys=[KEY], progress=False)
    policy, _ = build_policy(cfg, data)
    assert policy.config.image_keys == [KEY] and policy.config.image_size == SIZE
    assert policy.config.vision_width == 16
    bad = replace(cfg, policy=get_preset("cpu-image", goal_dim=16, image_size=48))
    with pytest.raises(ValueError, match="does not match"):
        build_policy(bad, data)
    not_loaded = replace(data, images={})
    with pytest.raises(ValueError, match="not loaded"):
        build_policy(cfg, not_loaded)


@pytest.mark.slow
def test_worker_count_does_not_change_image_datasets(image_dataset, tmp_path):
    kw = dict(tasks=[TASK], episodes_per_task=2, max_steps=150, progress=False, cameras=["corner"], image_size=SIZE)
    two = DatasetReader(generate_demos(tmp_path / "w2", workers=2, **kw))
    one = DatasetReader(image_dataset)
    assert two.episode_extra == one.episode_extra
    np.testing.assert_array_equal(two.column("observation.state"), one.column("observation.state"))
    for i in range(one.num_episodes):
        np.testing.assert_array_equal(two.video_frames(KEY, i), one.video_frames(KEY, i))
