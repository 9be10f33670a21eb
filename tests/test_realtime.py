"""Asynchronous chunk execution (mode_policy.serving.realtime): when chunks are requested and switched,
what an RTC request carries, measured delays, the observation history, and a policy in a thread."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from mode_policy.errors import ConfigError
from mode_policy.evaluation.realtime import SimulatedDelay
from mode_policy.model.config import get_preset
from mode_policy.policy import MoDEPolicy
from mode_policy.serving.realtime import ChunkExecutor, DelayEstimate


class FakeSource:
    """Chunk k (the k-th request) holds 100 k + i at action i (one row, one dimension), starts with
    the prefix's first ``delay`` actions when given one, and is ready ``latency`` ticks after it
    was requested."""

    def __init__(self, horizon: int, latency: int = 0) -> None:
        self.horizon, self.latency = horizon, latency
        self.requests: list[dict] = []

    def submit(self, batch, prefix, delay):
        k = len(self.requests)
        chunk = (100.0 * k + np.arange(self.horizon, dtype=np.float32)).reshape(1, self.horizon, 1)
        if prefix is not None:
            chunk[:, :delay] = prefix[:, :delay]
        self.requests.append({"batch": batch, "prefix": None if prefix is None else prefix.copy(), "delay": delay})
        self._chunk = chunk

    def poll(self, elapsed):
        return self._chunk if elapsed >= self.latency else None

    def wait(self):
        return self._chunk


def run(executor: ChunkExecutor, ticks: int) -> list[float]:
    return [float(executor.step({"observation.state": np.full((1, 2), t, np.float32)})[0, 0]) for t in range(ticks)]


def test_sync_waits_for_every_chunk():
    source = FakeSource(horizon=5, latency=3)  # the latency is never seen: sync waits
    executor = ChunkExecutor(source, 5, 3, "sync")
    assert run(executor, 8) == [0, 1, 2, 100, 101, 102, 200, 201]
    assert executor.stats.switches == [3, 6] and executor.stats.waits == 2 and executor.stats.delays == []
    assert [float(r["batch"]["observation.state"][0, 0]) for r in source.requests] == [0, 3, 6]  # fresh observations


def test_naive_keeps_executing_and_enters_the_new_chunk_where_time_has_got_to():
    source = FakeSource(horizon=6, latency=2)
    executor = ChunkExecutor(source, 6, 3, "naive")
    # requests at ticks 3 and 6 (3 actions of each chunk counted from its observation); each arrives
    # 2 ticks later and is entered at its action 2
    assert run(executor, 10) == [0, 1, 2, 3, 4, 102, 103, 104, 202, 203]
    assert executor.stats.switches == [5, 8] and executor.stats.delays == [2, 2]
    assert all(r["prefix"] is None for r in source.requests)


def test_rtc_sends_what_runs_meanwhile_with_the_measured_delay():
    source = FakeSource(horizon=6, latency=2)
    executor = ChunkExecutor(source, 6, 3, "rtc", DelayEstimate(initial=1))
    actions = run(executor, 12)
    first, second = source.requests[1], source.requests[2]
    np.testing.assert_array_equal(first["prefix"][0, :, 0], [3, 4, 5])  # chunk 0 from tick 3 on
    assert first["delay"] == 1 and second["delay"] == 2  # the initial guess, then the measured delay
    np.testing.assert_array_equal(second["prefix"][0, :, 0], [103, 104, 105])  # chunk 1 from tick 6 on
    # chunk 1 froze one action (3) but arrived after two: its action 2 (102) runs at tick 5;
    # chunk 2 froze both (103, 104), so the switch repeats what chunk 1 would have done
    assert actions == [0, 1, 2, 3, 4, 102, 103, 104, 202, 203, 204, 302]
    assert executor.stats.assumed == [1, 2, 2] and executor.stats.delays == [2, 2, 2]


def test_a_chunk_that_runs_out_waits():
    source = FakeSource(horizon=4, latency=10)
    executor = ChunkExecutor(source, 4, 2, "naive")
    assert run(executor, 6) == [0, 1, 2, 3, 102, 103]  # chunk 0 ran out at tick 4: wait, enter at 4 - 2
    assert executor.stats.waits == 1 and executor.stats.delays == [2]


def test_delay_estimate_is_the_largest_recent_one():
    estimate = DelayEstimate(initial=3, window=3)
    assert estimate.value == 3
    for ticks in (1, 4, 2, 1, 1):
        estimate.record(ticks)
    assert estimate.value == 2  # 4 has left the window of the last 3
    with pytest.raises(ConfigError):
        DelayEstimate(initial=-1)


def test_history_and_reset():
    source = FakeSource(horizon=4)
    executor = ChunkExecutor(source, 4, 2, "sync", n_obs_steps=2)
    run(executor, 3)
    first, second = (r["batch"]["observation.state"] for r in source.requests)
    assert first.shape == (1, 2, 2) and first[0, :, 0].tolist() == [0, 0]  # the first frame, repeated
    assert second[0, :, 0].tolist() == [1, 2]
    executor.reset()
    assert executor.chunk is None and not executor.history and executor.tick == 0
    with pytest.raises(ConfigError, match="execute_horizon=4 must be in"):
        ChunkExecutor(source, 4, 4, "rtc")  # asynchronous: the chunk must outlast the request
    with pytest.raises(ConfigError, match="execution mode"):
        ChunkExecutor(source, 4, 2, "eager")


def tiny_policy() -> MoDEPolicy:
    torch.manual_seed(0)
    policy = MoDEPolicy(get_preset("tiny", state_dim=3, action_dim=2, goal_dim=4, horizon=6, n_action_steps=3))
    with torch.no_grad():
        torch.nn.init.normal_(policy.denoiser.net.action_out.weight, std=0.5)
    return policy.eval()


def test_rtc_chunks_of_a_policy_start_with_the_actions_executed_meanwhile():
    policy = tiny_policy()
    chunks = []

    def predict(batch, prefix, delay):
        kwargs = {} if prefix is None else {"prefix": torch.as_tensor(prefix), "delay": delay}
        chunks.append(policy.predict_action_chunk(batch, **kwargs).numpy())
        return chunks[-1]

    executor = ChunkExecutor(SimulatedDelay(predict, 2), 6, 3, "rtc", DelayEstimate(initial=2))
    executed = [
        executor.step({"observation.state": np.ones((1, 3), np.float32) * t, "goal": np.ones((1, 4))})[0]
        for t in range(14)
    ]
    assert executor.stats.switches == [5, 8, 11]
    for k, tick in enumerate(executor.stats.switches, start=1):
        requested = tick - 2
        np.testing.assert_array_equal(chunks[k][0, :2], np.stack(executed[requested:tick]))  # exactly


def test_a_policy_in_a_background_thread():
    policy = tiny_policy()
    executor = ChunkExecutor.for_policy(policy, mode="rtc")
    assert executor.execute_horizon == 3 and executor.horizon == 6
    obs = {"observation.state": torch.zeros(2, 3), "goal": torch.zeros(2, 4)}
    actions = []
    for _ in range(12):
        actions.append(executor.step(obs))
        time.sleep(0.002)  # a control period
    assert all(a.shape == (2, 2) for a in actions)
    assert executor.stats.switches and all(d >= 0 for d in executor.stats.delays)
    executor.reset()
    executor.source.close()
