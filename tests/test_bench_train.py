"""bench train: samples/s and fraction of the matmul peak of a training step, MoDE beside dense (tiny preset)."""

import pytest
import torch

from mode_policy.bench.training import TrainStep, bench_train, format_train, make_train_batch, train_config
from mode_policy.cli.commands import COMMANDS
from mode_policy.cli.parsing import parse_command
from mode_policy.errors import ConfigError
from mode_policy.policy import MoDEPolicy


def test_bench_train_smoke_on_the_tiny_preset():
    result = bench_train(("tiny",), {"tiny": 16}, steps=2, progress=False)
    entry = result["presets"]["tiny"]
    mode, dense = entry["variants"]["mode"], entry["variants"]["dense_active"]
    for row in (mode, dense):
        assert row["batch_size"] == 16 and row["step_ms"] > 0
        assert row["samples_per_s"] == pytest.approx(16 / (row["step_ms"] / 1e3))
        assert row["achieved_gflops"] == pytest.approx(row["gflop_per_step"] / (row["step_ms"] / 1e3))
        assert row["fraction_of_peak"] == pytest.approx(row["achieved_gflops"] / row["matmul_peak_gflops"])
        assert 0 < row["fraction_of_peak"] < 2
    # equal active parameters, so (up to MoDE's routers) equal work per step
    assert dense["active_params"] < mode["active_params"] < 1.1 * dense["active_params"]
    assert mode["total_params"] > 1.5 * dense["total_params"]
    assert mode["gflop_per_step"] == pytest.approx(dense["gflop_per_step"], rel=0.05)
    assert entry["mode_over_dense_samples_per_s"] == pytest.approx(mode["samples_per_s"] / dense["samples_per_s"])
    assert entry["side_by_side"] and "of peak" in format_train(result)


def test_pairs_too_large_to_hold_together_run_one_after_the_other(monkeypatch):
    import mode_policy.bench.training as bt

    monkeypatch.setattr(bt, "TOGETHER_BYTES", 0)
    entry = bench_train(("tiny",), {"tiny": 4}, steps=2, progress=False)["presets"]["tiny"]
    assert not entry["side_by_side"] and set(entry["variants"]) == {"mode", "dense_active"}
    assert all(row["fraction_of_peak"] > 0 for row in entry["variants"].values())


def test_a_step_trains_and_counts_forward_and_backward():
    cfg = train_config("tiny")
    assert cfg.state_dim == 39 and not cfg.image_keys
    policy = MoDEPolicy(cfg)
    step = TrainStep(policy, make_train_batch(cfg, 8), lr=1e-2)
    before = [p.detach().clone() for p in policy.parameters()]
    flops = step.flops()
    assert any(not torch.equal(a, p) for a, p in zip(before, policy.parameters()))  # AdamW moved the weights
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        policy(step.batch)
    assert 2.5 < flops / counter.get_total_flops() < 3.5  # backward: about twice the forward


def test_bench_train_refuses_what_it_cannot_measure():
    with pytest.raises(ConfigError, match="steps=1"):
        bench_train(("tiny",), steps=1, progress=False)
    cmd = COMMANDS["bench"]
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        cmd.run(parse_command(cmd.options, ["train", "--train-presets", "nope"], "bench", None, cmd.positional))
    with pytest.raises(ConfigError, match="unknown benchmark 'speed'"):
        cmd.run(parse_command(cmd.options, ["speed"], "bench", None, cmd.positional))
