"""Batches built ahead on a thread (mode_policy.data.prefetch): the same stream as inline, the
exact resume point, the producer's errors in the main thread, and no thread left behind."""

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mode_policy.bench.data import write_synthetic_dataset
from mode_policy.data.mixture import MixtureSampler
from mode_policy.data.prefetch import THREAD_NAME, BatchStream, batch_to, pin_batch
from mode_policy.data.windows import EpisodeData, WindowSampler
from mode_policy.errors import DataError
from mode_policy.model.config import get_preset
from mode_policy.policy import MoDEPolicy
from mode_policy.training.config import TrainConfig
from mode_policy.training.loop import train, weights_checksum
from mode_policy.training.setup import Run

CAMERAS = ["observation.images.static", "observation.images.gripper"]


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


def episode_data(frames: int = 60, episodes: int = 3, size: int = 8) -> EpisodeData:
    gen = torch.Generator().manual_seed(0)
    length = frames // episodes
    starts = torch.arange(frames) // length * length
    return EpisodeData(
        state=torch.randn(frames, 5, generator=gen),
        action=torch.randn(frames, 3, generator=gen),
        episode_start=starts,
        episode_end=starts + length,
        task_index=torch.arange(frames) // length % 2,
        tasks=["a", "b"],
        episode_bounds=np.array([[e * length, (e + 1) * length] for e in range(episodes)]),
        images={k: torch.randint(0, 256, (frames, size, size, 3), dtype=torch.uint8, generator=gen) for k in CAMERAS},
    )


def window_source(data: EpisodeData, seed: int = 1):
    """``build()`` of window batches of 4 drawn from one generator, and that generator."""
    sampler = WindowSampler(data, n_obs_steps=2, horizon=4)
    gen = torch.Generator().manual_seed(seed)
    return (lambda: sampler.batch(torch.randint(0, len(sampler), (4,), generator=gen))), gen


def stream(data: EpisodeData, depth: int, count: int = 6, build=None) -> BatchStream:
    """A stream of ``count`` batches of ``build`` (default: :func:`window_source`'s)."""
    default, gen = window_source(data)
    return BatchStream(build or default, count, position=gen.get_state, rewind=gen.set_state, depth=depth)


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]) if torch.is_tensor(x[key]) else x[key] == y[key], key


def test_prefetched_batches_are_the_inline_batches():
    data = episode_data()
    with stream(data, depth=0) as inline:
        want = list(inline)
    ahead = stream(data, depth=3)
    with ahead:
        assert ahead.prefetching
        got = list(ahead)
    assert len(got) == 6 and not prefetch_threads()
    assert_same_batches(got, want)
    assert not torch.equal(got[0][CAMERAS[0]], got[1][CAMERAS[0]])  # a stream, not one batch repeated
    assert got[0][CAMERAS[0]].dtype == torch.uint8 and got[0][CAMERAS[0]].shape == (4, 2, 8, 8, 3)


def test_position_is_the_last_batch_handed_out_and_closing_rewinds():
    data = episode_data()
    build, gen = window_source(data)
    states, want = [gen.get_state()], []
    for _ in range(4):
        want.append(build())
        states.append(gen.get_state())

    build, gen = window_source(data)
    ahead = BatchStream(build, 4, position=gen.get_state, rewind=gen.set_state, depth=2)
    first = ahead.next()
    deadline = time.time() + 10
    while not torch.equal(gen.get_state(), states[4]) and time.time() < deadline:
        time.sleep(0.01)  # the producer draws the other three: two queued, one waiting to be
    assert torch.equal(gen.get_state(), states[4]), "the producer should have drawn ahead"
    assert torch.equal(ahead.position, states[1])  # the resume point: after the one batch handed out
    ahead.close()
    assert not prefetch_threads()
    assert torch.equal(gen.get_state(), states[1])  # rewound: the batches built ahead are drawn again
    with BatchStream(build, 3, position=gen.get_state, rewind=gen.set_state, depth=2) as continued:
        assert_same_batches([first, *continued], want)


def test_a_producer_error_is_raised_in_the_consumer_at_its_batch():
    data = episode_data()
    sampler = WindowSampler(data, n_obs_steps=1, horizon=4)
    calls = []

    def build_batch():
        calls.append(1)
        if len(calls) == 3:
            raise DataError("frame 17 of camera static is corrupt")
        return sampler.batch(torch.arange(4))

    ahead = stream(data, depth=4, count=6, build=build_batch)
    with ahead:
        ahead.next()
        ahead.next()
        with pytest.raises(DataError, match="frame 17 of camera static is corrupt") as caught:
            ahead.next()
    frames = [entry.name for entry in caught.traceback]
    assert "build_batch" in frames and "_produce" in frames  # the producer's own traceback
    assert not prefetch_threads()
    assert len(calls) == 3  # nothing built after the error


def test_leaving_early_joins_a_producer_blocked_on_a_full_queue():
    data = episode_data()
    ahead = stream(data, depth=1, count=1000)
    start = time.perf_counter()
    with pytest.raises(KeyError), ahead:
        ahead.next()
        time.sleep(0.05)  # the producer now waits on the full queue
        raise KeyError("the step failed")
    assert not prefetch_threads() and time.perf_counter() - start < 5


def test_moving_a_batch_keeps_camera_frames_uint8():
    batch = episode_data().images[CAMERAS[0]][:2]
    moved = batch_to({"x": batch, "task": ["a", "b"]}, torch.device("cpu"))
    assert moved["x"].dtype == torch.uint8 and moved["task"] == ["a", "b"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_batches_are_pinned_then_moved_as_uint8():
    data = episode_data()
    pinned = pin_batch({"x": data.images[CAMERAS[0]][:2], "task": ["a"]})
    assert pinned["x"].is_pinned() and pinned["task"] == ["a"]
    sampler = WindowSampler(data, n_obs_steps=1, horizon=4)
    with BatchStream(lambda: sampler.batch(torch.arange(4)), 2, position=int, rewind=print, device="cuda") as s:
        batch = s.next()
    assert batch[CAMERAS[0]].device.type == "cuda" and batch[CAMERAS[0]].dtype == torch.uint8


def test_a_negative_prefetch_is_refused():
    with pytest.raises(ValueError, match="prefetch=-1"):
        TrainConfig(prefetch=-1)


# ------------------------------------------------------------------ in training
@pytest.fixture(scope="module")
def camera_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prefetch") / "data"
    return write_synthetic_dataset(root, episodes=3, length=20, image_size=16, cameras=("static", "gripper"))


def camera_cfg(dataset: Path, out: Path, **kw) -> TrainConfig:
    policy = get_preset("tiny", goal_dim=16, image_keys=CAMERAS, image_size=16, vision_width=8, image_shift_pad=2)
    defaults = dict(
        dataset=str(dataset),
        output_dir=str(out),
        preset="tiny",
        policy=policy,
        steps=6,
        batch_size=8,
        log_every=1,
        checkpoint_every=3,
        warmup_steps=1,
        progress=False,
        language="task",
    )
    return TrainConfig(**{**defaults, **kw})


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_with_and_without_prefetch_is_bit_identical(camera_dataset, tmp_path):
    inline = train(camera_cfg(camera_dataset, tmp_path / "inline", prefetch=0))
    ahead = train(camera_cfg(camera_dataset, tmp_path / "ahead", prefetch=3))
    assert len(losses(inline)) == 6 and losses(ahead) == losses(inline)
    assert weights_checksum(MoDEPolicy.from_pretrained(ahead / "model")) == weights_checksum(
        MoDEPolicy.from_pretrained(inline / "model")
    )
    assert not prefetch_threads()
    state = torch.load(inline / "checkpoints" / "step_00000003" / "training_state.pt", weights_only=False)
    ahead_state = torch.load(ahead / "checkpoints" / "step_00000003" / "training_state.pt", weights_only=False)
    assert torch.equal(state["data_rng"][0], ahead_state["data_rng"][0]) and state["sampler"] == ahead_state["sampler"]


def test_resuming_from_a_checkpoint_taken_while_the_producer_was_ahead(camera_dataset, tmp_path, monkeypatch):
    ahead_at_checkpoint = []
    checkpoint = Run.checkpoint

    def checkpoint_when_ahead(run: Run) -> None:
        deadline = time.time() + 10
        while run.step < run.cfg.steps and time.time() < deadline:  # until the producer drew ahead
            if not torch.equal(run.data_gen.get_state(), run.data_position()[0]):
                break
            time.sleep(0.01)
        ahead_at_checkpoint.append(not torch.equal(run.data_gen.get_state(), run.data_position()[0]))
        checkpoint(run)

    monkeypatch.setattr(Run, "checkpoint", checkpoint_when_ahead)
    reference = train(camera_cfg(camera_dataset, tmp_path / "ref", steps=8, checkpoint_every=4, prefetch=2))
    assert ahead_at_checkpoint == [True, False]  # step 4: batches built ahead; step 8: the end
    monkeypatch.setattr(Run, "checkpoint", checkpoint)
    partial = tmp_path / "stopped"
    shutil.copytree(reference, partial)  # as if stopped right after the step-4 checkpoint
    shutil.rmtree(partial / "model")
    shutil.rmtree(partial / "checkpoints" / "step_00000008")
    (partial / "checkpoints" / "LATEST").write_text("step_00000004\n")
    resumed = train(camera_cfg(camera_dataset, partial, steps=8, checkpoint_every=4, prefetch=2), resume=True)
    assert losses(resumed)[4:] == losses(reference)[4:]
    assert weights_checksum(MoDEPolicy.from_pretrained(resumed / "model")) == weights_checksum(
        MoDEPolicy.from_pretrained(reference / "model")
    )


def test_a_crash_while_building_a_batch_surfaces_from_train(camera_dataset, tmp_path, monkeypatch):
    sample = MixtureSampler.sample
    calls = []

    def failing_sample(self, size, generator):
        calls.append(threading.current_thread().name)
        if len(calls) == 3:
            raise DataError("camera static: frame file vanished")
        return sample(self, size, generator)

    monkeypatch.setattr(MixtureSampler, "sample", failing_sample)
    with pytest.raises(DataError, match="camera static: frame file vanished"):
        train(camera_cfg(camera_dataset, tmp_path / "run", prefetch=2))
    assert calls == [THREAD_NAME] * 3  # built on the producer thread, raised here
    assert not prefetch_threads()
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
    ]


def test_bench_feed_reports_the_path_beside_a_given_step():
    from mode_policy.bench.data import bench_feed, feed_config, format_feed

    cfg = feed_config("tiny", image_size=16)  # the paper's two cameras, small
    result = bench_feed(cfg, batch_size=4, batches=3, rounds=1, step_ms=2.0, loop_steps=2, frames=100, progress=False)
    assert result["cameras"] == CAMERAS and result["step_source"] == "given"
    assert all(row["batches_per_s"] > 0 for row in result["path"].values())
    assert set(result["loop"]) == {"inline", "prefetch"} and not prefetch_threads()
    text = format_feed(result)
    assert "2 camera(s) (static, gripper) at 16x16" in text and "prefetch 2" in text
    assert "training step to feed: 2.0 ms (given, modelled as a wait" in text and "waiting for data" in text
    unmeasured = bench_feed(cfg, batch_size=4, batches=2, rounds=1, frames=100, device="cpu", progress=False)
    assert "loop" not in unmeasured and "training step: not measured on the CPU" in format_feed(unmeasured)
    with pytest.raises(ValueError, match="prefetch=0"):
        bench_feed(cfg, prefetch=0, progress=False)
