"""Run a study's cells one after another, resumably.

::

    OUT/study.json                      the resolved study (variants after matching, every cell's spec)
    OUT/cells/<variant>/seed<k>/run/    the training run (its checkpoints removed once the cell is done)
    OUT/cells/<variant>/seed<k>/eval_info.json
    OUT/cells/<variant>/seed<k>/result.json   written last, atomically: the cell is finished
    OUT/report.md, OUT/study.png        rewritten after every cell
    OUT/.study.lock                     held while a study runs: a second runner on OUT is refused

A cell folder without ``result.json`` is a cell killed half-way: it is removed and run again. A
finished cell whose recorded spec differs from the study's (the file was edited) is an error,
so results of two different recipes never mix. A variant whose ``init_from`` names another
fine-tunes that variant's cell: its ``run/`` (the EMA model in ``run/model``).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..fileio import atomic_write_json, file_lock
from ..training.config import TrainConfig
from .report import write_study_report
from .result import CellResult
from .spec import Cell, Study

RESULT_NAME = "result.json"
STUDY_RECORD = "study.json"
STUDY_LOCK = ".study.lock"


def cell_dir(out: Path, cell: Cell) -> Path:
    return out / "cells" / cell.variant / f"seed{cell.seed}"


def cell_train_config(study: Study, cell: Cell, out: Path) -> TrainConfig:
    """The cell's training run, in its folder under ``out``; a variant that fine-tunes another
    starts from that variant's cell (:meth:`Study.source_cell`)."""
    source = study.source_cell(cell)
    return study.train_config(cell, cell_dir(out, cell) / "run", cell_dir(out, source) / "run" if source else "")


def finished_results(study: Study, out: Path) -> dict[str, CellResult]:
    """Cell key -> result of every finished cell of ``study`` under ``out``; ConfigError naming the
    cells that were run with another recipe than the study file now gives."""
    results, stale = {}, []
    for cell in study.cells():
        path = cell_dir(out, cell) / RESULT_NAME
        if not path.is_file():
            continue
        result = CellResult.load(path)
        if result.spec != study.cell_spec(cell):
            stale.append(cell.key)
        else:
            results[cell.key] = result
    if stale:
        raise ConfigError(
            f"{out}: finished cell(s) {', '.join(stale)} were run with another recipe than {study.path} "
            "now gives (dataset, training, policy or evaluation settings changed): use another --out, or "
            "delete those cell folders to rerun them"
        )
    return results


def run_study(
    study: Study, out: str | Path, progress: bool = True, log: Callable[[str], None] = print
) -> dict[str, CellResult]:
    """Train and evaluate every unfinished cell, in order; the report is rewritten after each one.
    ConfigError if another process is running a study on ``out`` (its half-finished cell would be
    taken for a killed one and removed)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with file_lock(out / STUDY_LOCK, wait=False, holder="another `mode-policy study`"):
        return _run_cells(study, out, progress, log)


def _run_cells(study: Study, out: Path, progress: bool, log: Callable[[str], None]) -> dict[str, CellResult]:
    done = finished_results(study, out)
    atomic_write_json(out / STUDY_RECORD, study_record(study))
    cells = study.cells()
    skipped = set(done)
    for i, cell in enumerate(cells, 1):
        if cell.key in done:
            log(f"[{i}/{len(cells)}] {cell.key}: finished before, skipped")
            continue
        folder = cell_dir(out, cell)
        if folder.exists():
            log(f"[{i}/{len(cells)}] {cell.key}: half-finished (killed?), starting it again")
            shutil.rmtree(folder)
        source = study.source_cell(cell)
        steps = study.train_config(cell, "").steps
        log(f"[{i}/{len(cells)}] {cell.key}: training {steps} steps" + (f" from {source.key}" if source else ""))
        done[cell.key] = run_cell(study, cell, out, progress)
        r = done[cell.key]
        log(
            f"[{i}/{len(cells)}] {cell.key}: success {r.success_rate:.3f} ({r.successes}/{r.episodes}), "
            f"train {r.train_s:.0f} s, eval {r.eval_s:.0f} s"
        )
        write_study_report(study, out, done)
    if all(c.key in skipped for c in cells):
        write_study_report(study, out, done)  # nothing ran in this call: render what there is
    return done


def run_cell(study: Study, cell: Cell, out: Path, progress: bool) -> CellResult:
    """Train the cell's policy, evaluate it on the study's held-out episodes, record the result
    in the cell's folder under ``out``."""
    from ..evaluation.metaworld import evaluate_metaworld
    from ..policy import MoDEPolicy
    from ..training.loop import train
    from ..training.run_dir import RunDir

    folder = cell_dir(out, cell)
    cfg = cell_train_config(study, cell, out)
    cfg.progress = progress and cfg.progress
    start = time.perf_counter()
    run = RunDir(train(cfg))
    train_s = time.perf_counter() - start
    policy = MoDEPolicy.from_pretrained(run.model)
    start = time.perf_counter()
    result = evaluate_metaworld(
        policy,
        study.tasks,
        study.eval_episodes,
        seed=study.eval_seed,
        batch_size=study.eval_batch_size,
        progress=progress,
    )
    eval_s = time.perf_counter() - start
    result.policy = str(run.model)
    result.save(folder / "eval_info.json")
    shutil.rmtree(run.checkpoints, ignore_errors=True)  # the EMA model in run/model is what was evaluated
    overall = result.overall
    record = CellResult(
        cell.variant,
        cell.seed,
        study.cell_spec(cell),
        overall.successes,
        overall.episodes,
        {t: [r.successes, r.episodes] for t, r in result.per_task.items()},
        policy.parameter_counts(),
        train_s,
        eval_s,
    )
    atomic_write_json(folder / RESULT_NAME, asdict(record))
    return record


def study_record(study: Study) -> dict[str, Any]:
    """The resolved study as JSON: what every variant trains, and how dense variants were matched."""
    return {
        "name": study.name,
        "study_file": str(study.path),
        "dataset": study.dataset,
        "tasks": study.tasks,
        "eval_episodes": study.eval_episodes,
        "eval_seed": study.eval_seed,
        "seeds": study.seeds,
        "reference": study.reference,
        "paper_source": study.paper_source,
        "variants": [{**asdict(v), "policy_config": study.policy_config(v.name).to_dict()} for v in study.variants],
        "cells": {c.key: study.cell_spec(c) for c in study.cells()},
    }
