"""End to end on a tiny scale: demos -> train -> eval -> report, resume after
kill -9, DDP on two CPU processes, and clear errors for bad inputs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mode_policy.cli import main as cli
from mode_policy.envs.metaworld_demos import generate_demos
from mode_policy.errors import DataError
from mode_policy.model.config import get_preset
from mode_policy.policy import MoDEPolicy
from mode_policy.training.config import TrainConfig
from mode_policy.training.loop import train, weights_checksum

TASKS = ["reach-v3", "button-press-topdown-v3"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "demos"
    generate_demos(root, TASKS, 2, progress=False)
    return root


def tiny_cfg(dataset: Path, out: Path, **kw) -> TrainConfig:
    defaults = dict(
        dataset=str(dataset),
        output_dir=str(out),
        preset="tiny",
        steps=12,
        batch_size=16,
        log_every=4,
        checkpoint_every=4,
        warmup_steps=2,
        progress=False,
        language="task",
        policy=get_preset("tiny", goal_dim=16),
    )
    return TrainConfig(**{**defaults, **kw})


def test_end_to_end_demos_train_eval_report(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        cli(
            [
                "train",
                "--dataset",
                str(dataset),
                "--output_dir",
                str(run),
                "--preset",
                "tiny",
                "--steps",
                "6",
                "--batch-size",
                "16",
                "--log-every",
                "2",
                "--checkpoint-every",
                "3",
                "--language",
                "task",
                "--eval_every",
                "3",
                "--eval_episodes",
                "1",
            ]
        )
        == 0
    )
    assert (run / "model" / "model.safetensors").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6] and all("expert_usage" in r for r in records)
    (periodic,) = [json.loads(line) for line in (run / "evals.jsonl").read_text().splitlines()]  # not at the end
    assert periodic["step"] == 3 and periodic["episodes"] == 2 and set(periodic["per_task"]) == set(TASKS)
    assert periodic["success_rate"] == periodic["successes"] / 2
    assert cli(["eval", str(run), "--episodes", "1"]) == 0  # writes the run's eval_info.json
    result = json.loads((run / "eval_info.json").read_text())
    assert set(result["per_task"]) == set(TASKS) and result["overall"]["episodes"] == 2
    assert "reach-v3" in capsys.readouterr().out
    assert cli(["report", str(run)]) == 0
    report = (run / "report" / "report.md").read_text()
    for picture in ("success_per_task.png", "success_during_training.png", "loss_curve.png", "expert_usage.png"):
        assert picture in report and (run / "report" / picture).stat().st_size > 1000


def test_resume_after_kill_matches_uninterrupted_run(dataset, tmp_path):
    steps = 40
    reference = train(tiny_cfg(dataset, tmp_path / "ref", steps=steps, checkpoint_every=5))
    ref_weights = weights_checksum(MoDEPolicy.from_pretrained(reference / "model"))

    run = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "mode_policy.cli",
        "train",
        "--dataset",
        str(dataset),
        "--output_dir",
        str(run),
        "--preset",
        "tiny",
        "--steps",
        str(steps),
        "--batch_size",
        "16",
        "--log_every",
        "4",
        "--checkpoint_every",
        "5",
        "--warmup_steps",
        "2",
        "--language",
        "task",
        "--policy.goal_dim=16",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = run / "checkpoints" / "LATEST"
    deadline = time.time() + 120
    while time.time() < deadline and not (pointer.is_file() and pointer.read_text().strip() >= "step_00000010"):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = int(pointer.read_text().strip().split("_")[1])
    assert 10 <= saved < steps, "the run should have been killed mid-way"
    assert not (run / "model").exists()

    resumed = train(tiny_cfg(dataset, run, steps=steps), resume=True)
    summary = json.loads((resumed / "train_summary.json").read_text())
    assert summary["steps"] == steps
    # Same RNG, optimizer, scheduler and EMA state: identical to the uninterrupted run
    assert weights_checksum(MoDEPolicy.from_pretrained(resumed / "model")) == ref_weights


def test_a_checkpoint_without_sampler_state_resumes_identically(dataset, tmp_path):
    """Checkpoints written before mixtures have no "sampler" entry; one dataset needs none."""
    import shutil

    reference = train(tiny_cfg(dataset, tmp_path / "ref", steps=8))
    partial = tmp_path / "old"
    shutil.copytree(reference, partial)
    shutil.rmtree(partial / "model")
    shutil.rmtree(partial / "checkpoints" / "step_00000008")
    (partial / "checkpoints" / "LATEST").write_text("step_00000004\n")
    state_path = partial / "checkpoints" / "step_00000004" / "training_state.pt"
    state = torch.load(state_path, weights_only=False)
    assert state.pop("sampler") == {"counts": [64]}  # 4 steps x 16 rows, all from the one dataset
    torch.save(state, state_path)
    resumed = train(tiny_cfg(dataset, partial, steps=8), resume=True)
    assert weights_checksum(MoDEPolicy.from_pretrained(resumed / "model")) == weights_checksum(
        MoDEPolicy.from_pretrained(reference / "model")
    )


def test_ddp_two_cpu_processes_train_one_model(dataset, tmp_path):
    run = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29533",
        "-m",
        "mode_policy.cli",
        "train",
        "--dataset",
        str(dataset),
        "--output_dir",
        str(run),
        "--preset",
        "tiny",
        "--steps",
        "6",
        "--batch_size",
        "16",
        "--log_every",
        "2",
        "--checkpoint_every",
        "3",
        "--language",
        "task",
        "--policy.goal_dim=16",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["ranks_consistent"] and len(set(summary["weights_checksum_per_rank"])) == 1
    # only rank 0 wrote: one metrics line per log step, one TensorBoard file
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4, 6]
    assert len(list((run / "tb").iterdir())) == 1
    assert json.loads((run / "config.json").read_text())["world_size"] == 2


def test_bad_inputs_give_clear_errors(dataset, tmp_path, capsys):
    assert cli(["train", "--dataset", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "r")]) == 2
    assert "dataset folder not found" in capsys.readouterr().err

    run = train(tiny_cfg(dataset, tmp_path / "run", steps=4))
    weights = run / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    assert cli(["eval", str(run), "--episodes", "1", "--out", str(tmp_path / "e.json")]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err

    # a dataset whose action dimension differs from the checkpoint's
    import numpy as np

    from mode_policy.data.writer import DatasetWriter

    other = tmp_path / "other"
    features = {
        "observation.state": {"dtype": "float32", "shape": [39], "names": None},
        "action": {"dtype": "float32", "shape": [7], "names": None},
    }
    with DatasetWriter(other, fps=10, features=features) as writer:
        writer.add_episode(
            {"observation.state": np.zeros((5, 39), np.float32), "action": np.zeros((5, 7), np.float32)},
            task="reach the goal position",
        )
    with pytest.raises(DataError, match="action_dim=7, checkpoint .* expects 4"):
        train(tiny_cfg(other, run, steps=8), resume=True)


def test_training_follows_a_neighbour_through_its_thread_governor(dataset, tmp_path, monkeypatch):
    # the governor (threads chosen by the job) is stepped once per optimizer step; what it changes
    # reaches torch, the metrics and the summary; --threads N has none
    from mode_policy import threads as threads_mod

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()

    class Governor:
        def __init__(self, threads: int, max_threads: int, **settings) -> None:
            self.threads, self.steps, self.changes = threads, 0, []

        def step(self):
            self.steps += 1
            if self.steps == 5:  # a neighbour "starts" before step 5's end
                self.threads = 1
                torch.set_num_threads(1)
                self.changes.append((5, 1, 0.8))
                return 1
            return None

        def restart(self) -> None:
            pass

    monkeypatch.setattr(threads_mod, "ThreadGovernor", Governor)
    monkeypatch.setattr(threads_mod, "busy_cores", lambda sample_s=0.3: 0.0)
    try:
        run = train(tiny_cfg(dataset, tmp_path / "auto", steps=8))
        summary = json.loads((run / "train_summary.json").read_text())
        assert summary["thread_changes"] == [{"step": 5, "torch_threads": 1, "others_busy_cores": 0.8}]
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["torch_threads"] for r in records] == [summary["torch_threads"], 1]  # steps 4, 8
        run = train(tiny_cfg(dataset, tmp_path / "forced", steps=8, threads=2))
        assert json.loads((run / "train_summary.json").read_text())["thread_changes"] == []
    finally:
        torch.set_num_threads(before)
