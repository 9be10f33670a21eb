"""kill -9 at random moments of commands that replace or extend what a user has: the previous
output is never lost (demos --overwrite, convert --overwrite, train, eval)."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mode_policy.cli import main as cli
from mode_policy.data.reader import DatasetReader
from mode_policy.fileio import moved_aside, replacing

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _kill_after(cmd: list[str], delay: float) -> int:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mode_policy.cli", *cmd], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return proc.returncode


def test_killed_demos_overwrite_never_loses_the_old_dataset(tmp_path):
    out = tmp_path / "demos"
    assert cli(["demos", "--tasks=reach-v3", "--episodes=1", f"--out={out}", "--workers=1"]) == 0
    original = _digest(out)
    rng = random.Random(0)
    delays = sorted(rng.uniform(0.3, 6.0) for _ in range(8))
    finished = 0
    for delay in delays:  # 8 moments: during start-up, generation, writing and the swap
        rc = _kill_after(
            ["demos", "--tasks=reach-v3,push-v3", "--episodes=2", f"--out={out}", "--workers=1", "--overwrite"], delay
        )
        # finished before the kill, or killed after the swap (before exiting): the new dataset
        # replaced the old one, completely; otherwise the old one is there, unchanged
        if rc == 0 or _digest(out) != original:
            finished += 1
            assert cli(["inspect", str(out)]) == 0
            assert len(DatasetReader(out).episode_bounds) == 4, f"a partial dataset after a kill at {delay:.2f} s"
            break
    assert finished or _digest(out) == original


def test_killed_convert_overwrite_never_loses_the_old_dataset(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "calvin_fixture", Path(__file__).parent / "data" / "test_convert_calvin.py"
    )
    fixture = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixture)
    fixture.write_calvin_split(tmp_path / "calvin")
    out = tmp_path / "converted"
    assert cli(["convert", "calvin", str(tmp_path / "calvin"), f"--out={out}"]) == 0
    original = _digest(out)
    for delay in (0.3, 0.8, 1.5, 2.5, 4.0):
        rc = _kill_after(["convert", "calvin", str(tmp_path / "calvin"), f"--out={out}", "--overwrite"], delay)
        assert rc == 0 or _digest(out) == original, f"old dataset changed after a kill at {delay} s"


def test_killed_train_always_leaves_a_resumable_run(tmp_path):
    data = tmp_path / "data"
    assert cli(["demos", "--tasks=reach-v3", "--episodes=2", f"--out={data}", "--workers=1"]) == 0
    run = tmp_path / "run"
    base = [
        "train",
        f"--dataset={data}",
        f"--output_dir={run}",
        "--preset=tiny",
        "--language=task",
        "--policy.goal_dim=8",
        "--batch_size=8",
        "--checkpoint_every=3",
        "--log_every=1",
        "--steps=400",
    ]
    pointer = run / "checkpoints" / "LATEST"
    rng = random.Random(1)
    for round_ in range(5):  # 5 kills, each at a random moment shortly after a new checkpoint
        before = pointer.read_text() if pointer.is_file() else ""
        resume = ["--resume"] if before else []
        proc = subprocess.Popen(
            [sys.executable, "-m", "mode_policy.cli", *base, *resume],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 180
        while (
            time.time() < deadline and proc.poll() is None and (not pointer.is_file() or pointer.read_text() == before)
        ):
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert pointer.is_file() and pointer.read_text() != before, f"round {round_}: no new checkpoint"
    assert cli(base[:-1] + ["--steps=420", "--resume"]) == 0  # drops any half-written checkpoint
    assert not list((run / "checkpoints").glob(".*.tmp"))
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), "resumed runs must not repeat metrics records"


def test_replacing_keeps_the_old_output_until_the_new_one_is_complete(tmp_path):
    path = tmp_path / "out"
    path.mkdir()
    (path / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with replacing(path, overwrite=True) as new:
            new.mkdir()
            (new / "half.txt").write_text("half")
            assert (path / "old.txt").read_text() == "old"  # untouched while the new one is built
            raise RuntimeError("killed")
    assert [p.name for p in path.iterdir()] == ["old.txt"] and not new.exists()
    with replacing(path, overwrite=True) as new:
        new.mkdir()
        (new / "new.txt").write_text("new")
    assert [p.name for p in path.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_moved_aside_restores_the_old_output_after_an_interrupted_swap(tmp_path):
    path = tmp_path / "out"
    path.mkdir()
    (path / "old.txt").write_text("old")
    aside = tmp_path / ".out.old"
    os.replace(path, aside)  # what a kill right after moving the old output aside leaves
    with pytest.raises(RuntimeError):
        with moved_aside(path, overwrite=True):
            assert (aside / "old.txt").read_text() == "old"
            path.mkdir()
            (path / "partial.txt").write_text("x")
            raise RuntimeError("failed")
    assert [p.name for p in path.iterdir()] == ["old.txt"]


def test_killed_eval_never_damages_the_previous_result(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    assert cli(["demos", "--tasks=reach-v3", "--episodes=2", f"--out={data}", "--workers=1"]) == 0
    assert (
        cli(
            [
                "train",
                f"--dataset={data}",
                f"--output_dir={run}",
                "--preset=tiny",
                "--language=task",
                "--policy.goal_dim=8",
                "--batch_size=8",
                "--steps=2",
                "--progress=false",
            ]
        )
        == 0
    )
    assert cli(["eval", str(run), "--episodes=1"]) == 0
    original = (run / "eval_info.json").read_bytes()
    for delay in (1.0, 3.0, 6.0):
        rc = _kill_after(["eval", str(run), "--episodes=3", "--seed=1"], delay)
        if rc == 0:
            break
        # killed before the result's rename: the old result, byte for byte; killed after it (while
        # exiting): the complete new one. Never anything in between.
        now = (run / "eval_info.json").read_bytes()
        if now != original:
            new = json.loads(now)
            assert new["seed"] == 1 and new["overall"]["episodes"] == 3
            break
