"""`mode-policy bench gpu`: its CPU fallback runs here and prints every row; the CUDA-only parts
(graph capture, event timing) run where a GPU is."""

import re

import pytest
import torch

from mode_policy.bench.gpu import (
    MODE_TITLES,
    MODES,
    VARIANTS,
    bench_config,
    bench_gpu,
    build_policies,
    chunk_fn,
    cuda_graphed,
    host_sync_reason,
    inference_inputs,
    time_cuda,
)
from mode_policy.cli import main as cli
from mode_policy.errors import ConfigError

NUMBER = r"(\d+\.\d+) \((\d+\.\d+)\)"


def test_the_cpu_fallback_prints_every_row(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli(["bench", "gpu", "--gpu_rounds", "2", "--batch_size", "4"]) == 0
    out = capsys.readouterr().out
    assert "no CUDA device here: CPU fallback with the tiny preset" in out
    assert "chunk == predict_action_chunk: True" in out
    header = next(line for line in out.splitlines() if line.startswith("variant"))
    assert header.split()[2:] == ["eager", "CUDA", "graph", "compile", "compile+graph"]
    for batch in (1, 64):
        for variant in VARIANTS:
            row = next(line for line in out.splitlines() if re.match(rf"{variant}\s+{batch}\s", line))
            cells = re.split(r"\s{2,}", row.strip())[2:]
            assert len(cells) == len(MODES)
            eager = re.fullmatch(NUMBER, cells[0])
            assert eager and float(eager.group(1)) > 0, row
            assert cells[1:] == ["-", "-", "-"], row  # skipped, each for a stated reason
    assert f"- {MODE_TITLES['graph']}: no CUDA device: CUDA graphs need one" in out
    assert f"- {MODE_TITLES['compile']}: not asked for: the CPU fallback" in out
    for batch in (1, 64):
        assert re.search(rf"b{batch}\s+eager\s+cached / uncached \d\.\d{{3}}, cached / dense \d\.\d{{3}}", out)
    step = re.search(r"training step \(fp32, AdamW, EMA\), batch 4: (\d+\.\d) ms, ([\d,.]+) samples/s", out)
    assert step and float(step.group(1)) > 0
    assert re.search(r"data path, batch 4: inline \d+\.\d batches/s, prefetch 2 \d+\.\d batches/s", out)
    for name in ("inline", "prefetch 2"):
        assert re.search(rf"training loop, {name}: \d+\.\d\d steps/s, \d+\.\d% of the time waiting for data", out)


def test_bad_options_are_refused():
    with pytest.raises(ConfigError, match="compile='maybe'"):
        bench_gpu(compile="maybe", progress=False)
    with pytest.raises(ConfigError, match="rounds=1"):
        bench_gpu(rounds=1, progress=False)
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        bench_gpu("huge", progress=False)
    assert cli(["bench", "gpu", "--gpu_compile", "sometimes"]) == 2


def test_the_timed_chunk_is_predict_action_chunk():
    cfg, _ = bench_config("paper", cuda=False)
    policies = build_policies(cfg, torch.device("cpu"))
    batch, noise = inference_inputs(cfg, 3, torch.device("cpu"))
    for name, policy in policies.items():
        want = policy.predict_action_chunk(batch, noise)
        assert torch.equal(chunk_fn(policy, amp=False)(batch, noise), want), name
    assert not torch.equal(policies["cached"].predict_action_chunk(batch, noise), want)  # dense differs
    assert policies["uncached"].denoiser.use_expert_cache is False


cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda_only
def test_a_captured_chunk_replays_eagers_actions_for_new_inputs():
    cfg, _ = bench_config("paper", cuda=False)  # the small config, on the GPU
    device = torch.device("cuda")
    policy = build_policies(cfg, device)["cached"]
    fn = chunk_fn(policy, amp=True)
    batch, noise = inference_inputs(cfg, 2, device, seed=0)
    graphed = cuda_graphed(fn, batch, noise)
    other, other_noise = inference_inputs(cfg, 2, device, seed=5)
    assert torch.equal(graphed(other, other_noise), fn(other, other_noise))
    assert host_sync_reason(lambda: fn(batch, noise)) is None
    uncached = chunk_fn(build_policies(cfg, device)["uncached"], amp=True)
    assert "waits for the device" in host_sync_reason(lambda: uncached(batch, noise))


@cuda_only
def test_cuda_event_timing_sees_device_work():
    a = torch.randn(2048, 2048, device="cuda")
    timings = time_cuda({"one": lambda: a @ a, "eight": lambda: [a @ a for _ in range(8)]}, rounds=3)
    assert timings["eight"]["median_ms"] > 4 * timings["one"]["median_ms"] > 0
