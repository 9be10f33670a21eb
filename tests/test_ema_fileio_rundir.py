"""EMA warm-up, atomic writes, output safety, and the run directory's checkpoint bookkeeping."""

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from mode_policy.errors import CheckpointError, ConfigError, DataError, OutputError
from mode_policy.fileio import Outputs, atomic_write, atomic_write_json
from mode_policy.training.ema import EMA
from mode_policy.training.run_dir import RunDir


def test_ema_warm_up_follows_the_model_early_then_averages():
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.999)
    expected = 0.0
    for n in range(30):
        model.weight.data.fill_(float(n + 1))
        decay = min(0.999, (1 + n) / (10 + n))  # the warm-up: 0.1, 0.18, ... -> 0.999
        expected = decay * expected + (1 - decay) * (n + 1)
        ema.update(model)
        assert ema.model.weight.item() == pytest.approx(expected, rel=1e-6)
    assert ema.current_decay() == pytest.approx(31 / 40)
    # without the warm-up, a 0.999 average would still sit near the zero init
    assert ema.model.weight.item() > 10


def test_ema_state_round_trips():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, 0.9)
    for _ in range(3):
        ema.update(model)
    other = EMA(torch.nn.Linear(2, 2), 0.5)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 3 and other.decay == 0.9
    torch.testing.assert_close(other.model.weight, ema.model.weight)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "result.json"
    atomic_write_json(path, {"v": 1})

    def crash(tmp: str) -> None:
        Path(tmp).write_text('{"v": 2, "trunc')
        raise KeyboardInterrupt  # killed mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary file left behind
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_run_dir_checkpoints_latest_and_pruning(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.is_empty() and run.latest_checkpoint() is None

    def write(step):
        return lambda folder: (folder / "training_state.pt").write_text(str(step))

    for step in (5, 10, 15):
        run.save_checkpoint(step, write(step), keep=2)
    assert run.latest_checkpoint() == run.checkpoint(15)
    assert sorted(p.name for p in run.checkpoints.glob("step_*")) == ["step_00000010", "step_00000015"]
    (run.checkpoint(15) / "training_state.pt").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        run.latest_checkpoint()


def test_run_dir_jsonl_skips_a_torn_last_line_only(tmp_path):
    run = RunDir(tmp_path)
    run.append_metrics({"step": 1})
    run.append_metrics({"step": 2})
    with open(run.metrics, "a") as f:
        f.write('{"step": 3, "lo')  # killed mid-write
    assert [r["step"] for r in run.read_metrics()] == [1, 2]
    run.metrics.write_text('{"step": 1}\n{broken\n{"step": 3}\n')
    with pytest.raises(DataError, match="line 2"):
        run.read_metrics()


def test_model_dir_accepts_a_run_or_a_model_folder(tmp_path):
    run = RunDir(tmp_path / "run")
    run.model.mkdir(parents=True)
    (run.model / "config.json").write_text("{}")
    run.config.write_text("{}")
    assert RunDir.model_dir(run.root) == run.model
    assert RunDir.model_dir(run.model) == run.model
    assert RunDir.of_model(run.model).root == run.root
    assert RunDir.of_model(tmp_path / "elsewhere") is None


def test_a_full_disk_mid_write_is_one_line_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "result.json"
    atomic_write_json(path, {"v": 1})

    def full(tmp: str) -> None:
        Path(tmp).write_text('{"v": 2')
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match=r"cannot write .*result.json: No space left on device \(nothing was"):
        atomic_write(path, full)
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
    with pytest.raises(OutputError, match="Not a directory|File exists"):
        atomic_write_json(path / "inside.json", {})  # the parent is a file


def test_outputs_refuse_existing_files_inputs_and_foreign_sidecars_before_any_work(tmp_path, monkeypatch):
    from mode_policy import fileio

    source = tmp_path / "source"
    source.mkdir()
    (source / "a.bin").write_text("input")
    mine = tmp_path / "out.json"
    mine.write_text('{"mine": 1}')
    with pytest.raises(ConfigError, match="is an input of this command"):
        Outputs(overwrite=True, inputs=[source / "a.bin"]).file(source / "a.bin")
    with pytest.raises(ConfigError, match="is inside .*source, an input"):
        Outputs(inputs=[source]).file(source / "new.bin")
    with pytest.raises(ConfigError, match="holds .*source, an input"):
        Outputs(overwrite=True, inputs=[source]).folder(tmp_path, whole=True)
    with pytest.raises(ConfigError, match=r"out.json exists \(pass --overwrite"):
        Outputs().file(mine)
    assert Outputs(overwrite=True).file(mine) == mine
    assert Outputs().file(mine, own=lambda p: True, default=True) == mine  # the command's own slot
    with pytest.raises(ConfigError, match="out.json exists and is not the description from an earlier run"):
        Outputs(overwrite=True).file(mine, what="the description", sidecar_of=tmp_path / "out.onnx")
    outputs = Outputs()
    outputs.file(tmp_path / "new.onnx")
    with pytest.raises(ConfigError, match="would be both"):
        outputs.file(tmp_path / "new.onnx", what="its description")
    with pytest.raises(ConfigError, match="is a folder"):
        Outputs().file(source)
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        Outputs().folder(mine)
    with pytest.raises(ConfigError, match="source exists and is not empty"):
        Outputs().folder(source, whole=True)
    with pytest.raises(ConfigError, match="already holds a.bin"):
        Outputs().folder(source, names=["a.bin", "b.bin"])
    monkeypatch.setattr(fileio, "free_bytes", lambda folder: 10)
    with pytest.raises(ConfigError, match="needs at least 2.0 kB and .* has 10 bytes free"):
        Outputs().file(tmp_path / "big.bin", size=2000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "source"]  # the checks wrote nothing
