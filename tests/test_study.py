"""`mode-policy study`: study files are checked up front, cells resume (finished ones are kept, a
half-finished one goes on from its checkpoint, or is redone), a variant fine-tunes another's cell or a given model (init_from), and
the report's intervals are the textbook ones."""

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from mode_policy.cli import main as cli
from mode_policy.envs.metaworld_demos import generate_demos
from mode_policy.errors import ConfigError, DataNotFoundError
from mode_policy.fileio import file_lock
from mode_policy.policy import MoDEPolicy
from mode_policy.study import finished_results, load_study, run_study
from mode_policy.study.report import render_markdown, summarize
from mode_policy.study.result import CellResult
from mode_policy.study.runner import (
    RESULT_NAME,
    STUDY_LOCK,
    TRAINED,
    _logged_train_seconds,
    cell_dir,
    cell_train_config,
    resume_point,
)
from mode_policy.study.spec import Cell, transformer_active_params
from mode_policy.study.stats import (
    difference_interval,
    seed_interval,
    t_quantile,
    verdict,
)
from mode_policy.training.loop import train, weights_checksum
from mode_policy.training.run_dir import RunDir


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study") / "demos"
    generate_demos(root, ["reach-v3"], 2, progress=False)
    return root


def study_dict(root: Path, **top) -> dict:
    return {
        "name": "tiny study",
        "dataset": str(root),
        "eval_episodes": 1,
        "seeds": [0],
        "train": {
            "preset": "tiny",
            "steps": 3,
            "batch_size": 8,
            "warmup_steps": 1,
            "language": "task",
            "log_every": 3,
            "checkpoint_every": 2,
            "progress": False,
        },
        "policy": {"goal_dim": 8},
        "paper_source": "the paper, LIBERO-10",
        "variants": [
            {"name": "default", "paper": 0.92},
            {
                "name": "dense",
                "policy": {"routing": "dense"},
                "match_active_params": True,
                "paper": 0.839,
                "paper_reference": 0.851,
                "paper_note": "normalised",
            },
        ],
        **top,
    }


def write(tmp_path: Path, data: dict, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


# ------------------------------------------------------------------ a real run
def test_study_runs_keeps_finished_cells_and_redoes_a_half_one(dataset, tmp_path, capsys):
    study = load_study(write(tmp_path, study_dict(dataset)))
    out = tmp_path / "out"
    lines: list[str] = []
    results = run_study(study, out, progress=False, log=lines.append)
    assert sorted(results) == ["default/seed0", "dense/seed0"]
    for cell in study.cells():
        folder = cell_dir(out, cell)
        assert (folder / "run" / "model" / "model.safetensors").is_file()
        assert not (folder / "run" / "checkpoints").exists()  # removed once the cell is done
        saved = json.loads((folder / RESULT_NAME).read_text())
        assert saved["episodes"] == 1 and saved["per_task"] == {"reach-v3": [saved["successes"], 1]}
    dense = results["dense/seed0"].params
    assert dense["active_params"] == dense["total_params"]  # dense: nothing inactive
    report = (out / "report.md").read_text()
    assert "| default |" in report and "| dense |" in report and "dense_mlp_ratio=" in report
    assert (out / "study.png").stat().st_size > 1000
    record = json.loads((out / "study.json").read_text())
    assert record["variants"][1]["policy_config"]["dense_mlp_ratio"] == study.variant("dense").matching.dense_mlp_ratio

    # A cell killed in its evaluation: its folder without result.json (and with leftovers); its
    # trained model is evaluated again, not retrained. The finished one stays.
    kept = cell_dir(out, Cell("default", 0)) / RESULT_NAME
    kept_bytes, kept_mtime = kept.read_bytes(), kept.stat().st_mtime_ns
    half = cell_dir(out, Cell("dense", 0))
    (half / RESULT_NAME).unlink()
    (half / "leftover.tmp").write_text("x")
    model_mtime = (half / "run" / "model" / "model.safetensors").stat().st_mtime_ns
    lines.clear()
    again = run_study(study, out, progress=False, log=lines.append)
    assert "default/seed0: finished before, skipped" in lines[0]
    assert "dense/seed0: half-finished (killed?), trained, evaluating it" in lines[1]
    assert (half / "run" / "model" / "model.safetensors").stat().st_mtime_ns == model_mtime
    assert again["dense/seed0"].successes == results["dense/seed0"].successes
    assert kept.read_bytes() == kept_bytes and kept.stat().st_mtime_ns == kept_mtime
    assert not (half / "leftover.tmp").exists() and (half / RESULT_NAME).is_file()
    assert again["default/seed0"] == results["default/seed0"]

    # Another recipe under the same --out is refused, naming the cells
    changed = study_dict(dataset)
    changed["train"]["steps"] = 4
    with pytest.raises(ConfigError, match="default/seed0, dense/seed0 were run with another recipe"):
        run_study(load_study(write(tmp_path, changed, "changed.yaml")), out, progress=False, log=lines.append)
    # ... while settings that do not change the result are not a new recipe
    cosmetic = study_dict(dataset)
    cosmetic["train"]["log_every"] = 1
    assert len(finished_results(load_study(write(tmp_path, cosmetic, "cosmetic.yaml")), out)) == 2

    # A second runner on the same --out (the lock file held, as by a study still running) is
    # refused before it touches anything: the other's half-finished cell is not taken for a killed one
    (half / RESULT_NAME).unlink()
    with file_lock(out / STUDY_LOCK):
        with pytest.raises(ConfigError, match="another `mode-policy study` is using"):
            run_study(study, out, progress=False, log=lines.append)
    assert (half / "run" / "model").is_dir()
    run_study(study, out, progress=False, log=lines.append)  # the lock released: it goes on
    assert (half / RESULT_NAME).is_file()

    # The command line: --report_only rewrites the report from the finished cells
    (out / "report.md").unlink()
    assert cli(["study", str(tmp_path / "study.yaml"), "--out", str(out), "--report_only"]) == 0
    assert "2 of 2 cells finished" in (out / "report.md").read_text()
    assert cli(["study", str(tmp_path / "study.yaml")]) == 2
    assert "--out" in capsys.readouterr().err


def test_a_cell_killed_in_training_goes_on_from_its_checkpoint(dataset, tmp_path):
    data = study_dict(dataset, variants=[{"name": "default"}])
    data["train"].update(steps=4, checkpoint_every=2, keep_checkpoints=3, log_every=1)
    study = load_study(write(tmp_path, data))
    out, cell = tmp_path / "out", Cell("default", 0)
    # The run as a kill after step 3 leaves it: checkpoints of steps 2 (LATEST) and 4 (half-written:
    # not pointed at), no model, no summary; metrics up to step 4 (those after 2 are dropped)
    cfg = cell_train_config(study, cell, out)
    run = RunDir(train(cfg))
    uninterrupted = weights_checksum(MoDEPolicy.from_pretrained(run.model))
    shutil.rmtree(run.model)
    run.summary.unlink()
    run.checkpoint(4).rename(run.checkpoints / ".step_00000004.tmp")
    run.latest_pointer.write_text("step_00000002\n")
    assert resume_point(study, cell, out) == 2

    lines: list[str] = []
    result = run_study(study, out, progress=False, log=lines.append)[cell.key]
    assert "default/seed0: half-finished (killed?), resuming its training at step 2" in lines[0]
    # optimiser, schedule, EMA, data and RNG restored: the policy an unkilled cell trains
    assert weights_checksum(MoDEPolicy.from_pretrained(run.model)) == uninterrupted
    assert [r["step"] for r in run.read_metrics()] == [1, 2, 3, 4]
    assert result.train_s > 0 and (cell_dir(out, cell) / RESULT_NAME).is_file()

    # the study file edited since (another schedule): the killed run is not continued
    (cell_dir(out, cell) / RESULT_NAME).unlink()
    longer = dict(data, train={**data["train"], "steps": 5})
    assert resume_point(study, cell, out) == TRAINED
    assert resume_point(load_study(write(tmp_path, longer, "longer.yaml")), cell, out) is None
    run.config.unlink()
    assert resume_point(study, cell, out) is None  # no record of what the run trained


def test_logged_train_seconds_add_up_every_part_of_a_resumed_run(tmp_path):
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    for step, wall in [(1, 1.0), (2, 2.0), (3, 3.0), (4, 0.5), (5, 1.5)]:  # resumed at 3: wall_s restarts
        run.append_metrics({"step": step, "wall_s": wall})
    assert _logged_train_seconds(run) == 3.0 + 1.5
    assert _logged_train_seconds(run, up_to_step=2) == 2.0


# ------------------------------------------------------------ init_from
def finetune_dict(root: Path, **top) -> dict:
    """A pretraining variant at one seed, a scratch and a fine-tuning variant at two."""
    top = {"seeds": [0, 1], **top}
    return study_dict(
        root,
        variants=[
            {"name": "pretrained", "seeds": [0], "train": {"steps": 2}},
            {"name": "scratch"},
            {
                "name": "finetuned",
                "init_from": "pretrained",
                "train": {"lr": 0.0001},
                "policy": {"balance_loss_weight": 0.0},
                "reference": "scratch",
            },
        ],
        **top,
    )


def test_init_from_a_variant_pairs_cells_and_enters_the_spec(dataset, tmp_path):
    study = load_study(write(tmp_path, finetune_dict(dataset)))
    ft = study.variant("finetuned")
    assert (ft.init_from_variant, ft.init_from, ft.reference, ft.seeds) == ("pretrained", "", "scratch", [0, 1])
    assert study.variant("pretrained").seeds == [0] and study.variant("scratch").reference == "pretrained"
    assert [c.key for c in study.cells()] == [
        "pretrained/seed0",
        "scratch/seed0",
        "finetuned/seed0",
        "scratch/seed1",
        "finetuned/seed1",
    ]
    assert study.source_cell(Cell("finetuned", 1)) == Cell("pretrained", 0)  # its only seed
    assert study.source_cell(Cell("scratch", 1)) is None

    out = tmp_path / "out"
    cfg = cell_train_config(study, Cell("finetuned", 1), out)
    assert cfg.init_from == str(out / "cells" / "pretrained" / "seed0" / "run")
    assert cfg.output_dir == str(out / "cells" / "finetuned" / "seed1" / "run")
    assert (cfg.lr, cfg.steps, cfg.seed, cfg.dataset) == (0.0001, 3, 1, str(dataset))
    assert cell_train_config(study, Cell("pretrained", 0), out).steps == 2
    assert cell_train_config(study, Cell("scratch", 0), out).init_from == ""

    # What a fine-tuning cell computes includes what it starts from: a changed pretraining is a new recipe
    spec = study.cell_spec(Cell("finetuned", 1))
    assert spec["train"]["init_from"] == "pretrained/seed0"
    assert spec["init_from"] == study.cell_spec(Cell("pretrained", 0))
    longer = finetune_dict(dataset)
    longer["variants"][0]["train"]["steps"] = 4
    changed = load_study(write(tmp_path, longer, "longer.yaml"))
    assert changed.cell_spec(Cell("finetuned", 1)) != spec
    assert changed.cell_spec(Cell("scratch", 1)) == study.cell_spec(Cell("scratch", 1))

    text = render_markdown(study, {}, None)
    assert "fine-tunes `pretrained`" in text and "seeds [0]" in text and "some at fewer" in text


def test_a_single_seed_source_trains_before_the_first_cell_that_needs_it(dataset, tmp_path):
    data = finetune_dict(dataset)
    data["variants"][0]["seeds"] = [1]
    study = load_study(write(tmp_path, data))
    keys = [c.key for c in study.cells()]
    assert keys.index("pretrained/seed1") < keys.index("finetuned/seed0")
    assert sorted(keys) == sorted(
        ["pretrained/seed1", "scratch/seed0", "scratch/seed1", "finetuned/seed0", "finetuned/seed1"]
    )


def test_init_from_a_model_folder(dataset, tmp_path):
    model = tmp_path / "pretrained_model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"")  # the file is all loading checks
    data = finetune_dict(dataset)
    data["variants"] = [{"name": "default"}, {"name": "finetuned", "init_from": str(model)}]
    study = load_study(write(tmp_path, data))
    ft = study.variant("finetuned")
    assert (ft.init_from, ft.init_from_variant) == (str(model), "")
    assert study.source_cell(Cell("finetuned", 0)) is None
    cfg = cell_train_config(study, Cell("finetuned", 1), tmp_path / "out")
    assert cfg.init_from == str(model) and study.cell_spec(Cell("finetuned", 1))["train"]["init_from"] == str(model)


def test_a_variant_fine_tunes_the_model_another_trained(dataset, tmp_path, monkeypatch):
    """The runner trains the source cell first and hands its run to the fine-tuning cell's TrainConfig."""
    import mode_policy.training.loop as loop

    data = finetune_dict(dataset, seeds=[0])
    data["variants"] = [data["variants"][0], {**data["variants"][2], "reference": "pretrained"}]
    study = load_study(write(tmp_path, data))
    trained = []
    real_train = loop.train

    def spy(cfg, *args, **kwargs):
        trained.append(cfg)
        return real_train(cfg, *args, **kwargs)

    monkeypatch.setattr(loop, "train", spy)
    out = tmp_path / "out"
    results = run_study(study, out, progress=False, log=lambda line: None)
    assert [c.init_from for c in trained] == ["", str(cell_dir(out, Cell("pretrained", 0)) / "run")]
    assert trained[1].lr == 0.0001 and sorted(results) == ["finetuned/seed0", "pretrained/seed0"]
    config = json.loads((cell_dir(out, Cell("finetuned", 0)) / "run" / "model" / "config.json").read_text())
    assert config["freeze_router"] is True and config["balance_loss_weight"] == 0.0  # fine-tuned
    record = json.loads((out / "study.json").read_text())
    assert record["variants"][1]["init_from_variant"] == "pretrained"


def test_cells_in_worker_processes_wait_for_the_model_they_fine_tune(dataset, tmp_path):
    """Two workers: pretrained and scratch start together, finetuned only once pretrained is done."""
    study = load_study(write(tmp_path, finetune_dict(dataset, seeds=[0])))
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="workers=0"):
        run_study(study, out, progress=False, log=lambda line: None, workers=0)
    lines: list[str] = []
    results = run_study(study, out, progress=False, log=lines.append, workers=2)
    assert sorted(results) == ["finetuned/seed0", "pretrained/seed0", "scratch/seed0"]
    assert lines[0].endswith("pretrained/seed0: training 2 steps") and lines[1].endswith(
        "scratch/seed0: training 3 steps"
    )
    start = next(i for i, line in enumerate(lines) if "finetuned/seed0: training" in line)
    assert "from pretrained/seed0" in lines[start]
    assert any("pretrained/seed0: success" in line for line in lines[:start])
    for cell in study.cells():
        assert CellResult.load(cell_dir(out, cell) / RESULT_NAME) == results[cell.key]
    config = json.loads((cell_dir(out, Cell("finetuned", 0)) / "run" / "model" / "config.json").read_text())
    assert config["freeze_router"] is True
    assert "3 of 3 cells finished" in (out / "report.md").read_text()
    lines.clear()
    assert run_study(study, out, progress=False, log=lines.append, workers=2) == results
    assert all("finished before, skipped" in line for line in lines)


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[1] / "experiments").glob("*.yaml")), ids=lambda p: p.name
)
def test_the_study_files_in_experiments_are_valid(path, tmp_path, monkeypatch):
    """Every key checked and every variant's policy built, as `mode-policy study` does before training
    (in a folder holding the datasets they name, as the commands in their headers make them)."""
    data = yaml.safe_load(path.read_text())
    for entry in [data, *data["variants"]]:
        if entry.get("dataset"):
            (tmp_path / entry["dataset"]).mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(tmp_path)
    study = load_study(path)
    assert study.cells() and study.reference in {v.name for v in study.variants}
    for v in study.variants:
        study.policy_config(v.name)


# --------------------------------------------------------------- the maths
def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 2.5, 3, 4, 9, 30, 500):
        for p in (0.975, 0.9, 0.025):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), abs=1e-7)


def test_seed_and_difference_intervals():
    i = seed_interval([0.2, 0.4, 0.6], 36, 90)
    half = 4.302652729749 * 0.2 / math.sqrt(3)  # t(0.975, 2) * s / sqrt(n)
    assert (i.mean, i.low, i.high) == pytest.approx((0.4, 0.4 - half, 0.4 + half))
    assert i.method == "t over 3 seed means (df 2)"
    one = seed_interval([0.5], 5, 10)  # one seed: Wilson over its episodes
    assert one.method.startswith("Wilson") and (one.low, one.high) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    a, b = [0.5, 0.6, 0.7, 0.65], [0.3, 0.35, 0.5]
    d = difference_interval(a, b)
    stats = pytest.importorskip("scipy.stats")
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (d.low, d.high) == pytest.approx((ci.low, ci.high), abs=1e-7)
    assert d.mean == pytest.approx(sum(a) / 4 - sum(b) / 3)
    assert difference_interval([0.5], b) is None


def test_verdicts():
    below = difference_interval([0.1, 0.12, 0.11], [0.5, 0.52, 0.49])
    assert verdict(below, -0.07).startswith("agrees")
    assert verdict(below, +0.05) == "disagrees: opposite sign"
    wide = difference_interval([0.1, 0.5, 0.3], [0.2, 0.4, 0.35])
    assert verdict(wide, -0.07) == "cannot tell: our interval holds 0 (the paper's difference lies in our interval)"
    assert (wide.low, wide.high) == pytest.approx((-0.43, 0.40), abs=0.01)
    beyond = "cannot tell: our interval holds 0 (the paper's difference lies outside our interval: smaller here)"
    assert verdict(wide, -0.7) == beyond and verdict(wide, +0.7) == beyond
    assert verdict(below, -0.9) == "agrees (the paper's difference lies outside our interval: smaller here)"
    assert verdict(below, -0.1) == "agrees (the paper's difference lies outside our interval: larger here)"
    assert verdict(below, 0.0) == "agrees (the paper's difference lies outside our interval: larger here)"
    assert verdict(wide, None) == "no paper number" and verdict(None, -0.07) == "needs >= 2 seeds"


def fake_result(study, variant, seed, successes, episodes=10) -> CellResult:
    return CellResult(
        variant,
        seed,
        study.cell_spec(Cell(variant, seed)),
        successes,
        episodes,
        {"reach-v3": [successes, episodes]},
        {"active_params": 2_000_000, "total_params": 3_000_000},
        120.0,
        30.0,
    )


def test_table_rows_from_cell_results(dataset, tmp_path):
    study = load_study(write(tmp_path, study_dict(dataset, seeds=[0, 1, 2])))
    results = {
        r.variant + f"/seed{r.seed}": r
        for r in [
            fake_result(study, "default", 0, 8),
            fake_result(study, "default", 1, 9),
            fake_result(study, "default", 2, 7),
            fake_result(study, "dense", 0, 4),
            fake_result(study, "dense", 1, 5),
        ]
    }
    ref, dense = summarize(study, results)
    assert ref.interval.mean == pytest.approx(0.8) and ref.delta is None
    assert dense.seed_means == [0.4, 0.5]
    assert dense.delta.mean == pytest.approx(0.45 - 0.8)
    assert dense.variant.paper_delta == pytest.approx(0.839 - 0.851)
    text = render_markdown(study, results, "study.png")
    row = next(line for line in text.splitlines() if line.startswith("| dense |"))
    assert "| 0.450 |" in row and "| -0.350 |" in row and "0.839 (normalised)" in row and "| -0.012 |" in row
    assert f"| {dense.verdict} |" in row and "| 2 | 2.00M / 3.00M | 2.0 + 0.5 |" in row
    assert "| dense/seed2 | not run yet |" in text
    assert "t over 3 seed means (df 2)" in text and "t over 2 seed means (df 1)" in text
    assert "the paper, LIBERO-10" in text and "![" in text


def test_dense_matching_picks_the_closest_ratio(dataset, tmp_path):
    data = study_dict(dataset, policy={"goal_dim": 8, "top_k": 1})
    study = load_study(write(tmp_path, data))
    m = study.variant("dense").matching
    assert m.reference == "default" and m.reference_active == transformer_active_params(study.policy_config("default"))
    base = study.policy_config("dense")
    counts = {r: transformer_active_params(dataclasses.replace(base, dense_mlp_ratio=r)) for r in range(1, 17)}
    best = min(counts, key=lambda r: abs(counts[r] - m.reference_active))
    assert m.dense_mlp_ratio == best and m.active == counts[best]
    assert study.policy_config("dense").dense_mlp_ratio == best


# ------------------------------------------------------------ bad study files
BAD = {
    "unknown top-level key": ({"epochs": 3}, ConfigError, "unknown key.s. epochs"),
    "missing dataset": ({"dataset": None}, ConfigError, "'dataset' is missing"),
    "dataset not found": ({"dataset": "/nonexistent/demos"}, DataNotFoundError, "not found: /nonexistent/demos"),
    "unknown variant key": (
        {"variants": [{"name": "a", "polcy": {}}]},
        ConfigError,
        "variant 'a': unknown key.s. polcy",
    ),
    "bad variant field": (
        {"variants": [{"name": "a", "policy": {"n_expert": 2}}]},
        ConfigError,
        "variant 'a': policy: unknown key.s. n_expert",
    ),
    "bad variant value": (
        {"variants": [{"name": "a", "policy": {"top_k": "two"}}]},
        ConfigError,
        "variant 'a': top_k='two': expected an integer",
    ),
    "inconsistent variant": (
        {"variants": [{"name": "a", "policy": {"top_k": 5}}]},
        ConfigError,
        "variant 'a': top_k=5 must be in",
    ),
    "seed in train": ({"train": {"seed": 3}}, ConfigError, "train.seed is set by the study"),
    "unknown train field": ({"train": {"stepz": 3}}, ConfigError, "train: unknown key.s. stepz"),
    "bad seeds": ({"seeds": [0, 0]}, ConfigError, "seeds must be a list of distinct integers"),
    "no variants": ({"variants": []}, ConfigError, "'variants' must be a non-empty list"),
    "nameless variant": ({"variants": [{"policy": {}}]}, ConfigError, r"variants\[0\] needs a name"),
    "duplicate names": ({"variants": [{"name": "a"}, {"name": "a"}]}, ConfigError, "used twice: a"),
    "unknown reference": ({"reference": "b"}, ConfigError, "reference 'b' is not a variant"),
    "match a MoE variant": (
        {"variants": [{"name": "a"}, {"name": "b", "match_active_params": True}]},
        ConfigError,
        "only dense variants are matched",
    ),
    "match and set the ratio": (
        {
            "variants": [
                {"name": "a"},
                {"name": "b", "match_active_params": True, "policy": {"routing": "dense", "dense_mlp_ratio": 8}},
            ]
        },
        ConfigError,
        "do not set it too",
    ),
    "bad paper number": ({"variants": [{"name": "a", "paper": "high"}]}, ConfigError, "paper must be a number"),
    "init_from in train": ({"train": {"init_from": "runs/x"}}, ConfigError, "train.init_from is set by the study"),
    "seed in a variant's train": (
        {"variants": [{"name": "a", "train": {"seed": 1}}]},
        ConfigError,
        "variant 'a': train.seed is set by the study",
    ),
    "unknown variant train field": (
        {"variants": [{"name": "a", "train": {"stepz": 1}}]},
        ConfigError,
        "variant 'a': train: unknown key.s. stepz",
    ),
    "bad variant train value": (
        {"variants": [{"name": "a", "train": {"lr": -1.0}}]},
        ConfigError,
        "variant 'a': lr=-1.0",
    ),
    "variant seed not in the study": (
        {"variants": [{"name": "a", "seeds": [0, 7]}]},
        ConfigError,
        r"variant 'a': seeds \[7\] are not among the study's seeds \[0\]",
    ),
    "variant dataset not found": (
        {"variants": [{"name": "a", "dataset": "/nonexistent/pretrain"}]},
        DataNotFoundError,
        "variant 'a': dataset folder not found: /nonexistent/pretrain",
    ),
    "init_from neither variant nor folder": (
        {"variants": [{"name": "a"}, {"name": "b", "init_from": "pretrian"}]},
        ConfigError,
        "variant 'b': init_from 'pretrian' is neither a variant of the study .a, b. nor a run directory",
    ),
    "init_from a folder without a model": (
        {"variants": [{"name": "a", "init_from": "/"}]},
        ConfigError,
        "variant 'a': init_from '/' holds no finished model",
    ),
    "init_from itself": (
        {"variants": [{"name": "a"}, {"name": "b", "init_from": "b"}]},
        ConfigError,
        "init_from 'b' is the variant itself",
    ),
    "init_from a later variant": (
        {"variants": [{"name": "a", "init_from": "b"}, {"name": "b"}]},
        ConfigError,
        "init_from 'b' is listed after 'a': list the variant to fine-tune from first",
    ),
    "init_from unpaired seeds": (
        {
            "seeds": [0, 1, 2],
            "variants": [{"name": "a", "seeds": [0, 1]}, {"name": "b", "init_from": "a"}],
        },
        ConfigError,
        r"init_from 'a' trains seeds \[0, 1\], not \[2\]",
    ),
    "init_from and an architecture field": (
        {"variants": [{"name": "a"}, {"name": "b", "init_from": "a", "policy": {"top_k": 1}}]},
        ConfigError,
        "variant 'b': policy: top_k would change the architecture",
    ),
    "init_from not a string": (
        {"variants": [{"name": "a", "init_from": 3}]},
        ConfigError,
        "init_from must be a variant's name or a path",
    ),
    "reference of a variant unknown": (
        {"variants": [{"name": "a"}, {"name": "b", "reference": "c"}]},
        ConfigError,
        "variant 'b': reference 'c' is not another variant .variants: a.",
    ),
    "reference of a variant itself": (
        {"variants": [{"name": "a"}, {"name": "b", "reference": "b"}]},
        ConfigError,
        "variant 'b': reference 'b' is not another variant",
    ),
    "unknown task": ({"tasks": "reach-v9"}, ConfigError, "tasks: unknown Meta-World task"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_study_files_fail_before_training(case, dataset, tmp_path):
    top, error, message = BAD[case]
    data = study_dict(dataset, **top)  # a None value removes the key
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(error, match=message):
        load_study(write(tmp_path, data))


def test_unreadable_study_files(tmp_path):
    with pytest.raises(ConfigError, match="study file not found"):
        load_study(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("variants: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_study(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_study(tmp_path / "list.yaml")
