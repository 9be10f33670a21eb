"""Run a study's cells one after another, resumably.

::

    OUT/study.json                      the resolved study (variants after matching, every cell's spec)
    OUT/cells/<variant>/seed<k>/run/    the training run (its checkpoints removed once the cell is done)
    OUT/cells/<variant>/seed<k>/eval_info.json
    OUT/cells/<variant>/seed<k>/result.json   written last, atomically: the cell is finished
    OUT/report.md, OUT/study.png        rewritten after every cell
    OUT/.study.lock                     held while a study runs: a second runner on OUT is refused

A cell folder without ``result.json`` is a cell killed half-way. It goes on from where it stopped
when its run can (:func:`resume_point`: the same recipe, and a checkpoint or the trained model),
and is run again from step 0 otherwise; a resumed run restores its optimiser, schedule, EMA, data
and RNG states, so the cell trains the same policy as one never killed. A finished cell whose recorded spec differs from the study's (the file was edited) is an error,
so results of two different recipes never mix. A variant whose ``init_from`` names another
fine-tunes that variant's cell: its ``run/`` (the EMA model in ``run/model``).

With ``workers > 1`` that many cells train at once, each in its own spawned process with an
equal share of the cores as torch threads; a fine-tuning cell starts once its source is done.
Results and the report are the same as one after another (each cell is its own seeded run).
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModePolicyError
from ..fileio import atomic_write_json, file_lock
from ..training.config import TrainConfig
from ..training.run_dir import CHECKPOINT_PREFIX, MODEL_CONFIG, RunDir
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
    study: Study,
    out: str | Path,
    progress: bool = True,
    log: Callable[[str], None] = print,
    workers: int = 1,
) -> dict[str, CellResult]:
    """Train and evaluate every unfinished cell, in order (``workers`` at once); the report is
    rewritten after each one. ConfigError if another process is running a study on ``out`` (its
    half-finished cell would be taken for a killed one and removed)."""
    if workers < 1:
        raise ConfigError(f"workers={workers}: need at least 1 (cells trained at once)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with file_lock(out / STUDY_LOCK, wait=False, holder="another `mode-policy study`"):
        return _run_cells(study, out, progress, log, workers)


def _run_cells(
    study: Study, out: Path, progress: bool, log: Callable[[str], None], workers: int
) -> dict[str, CellResult]:
    done = finished_results(study, out)
    atomic_write_json(out / STUDY_RECORD, study_record(study))
    cells = study.cells()
    number = {cell.key: i for i, cell in enumerate(cells, 1)}
    todo = []
    for cell in cells:
        tag = f"[{number[cell.key]}/{len(cells)}] {cell.key}"
        if cell.key in done:
            log(f"{tag}: finished before, skipped")
            continue
        folder = cell_dir(out, cell)
        if folder.exists():
            point = resume_point(study, cell, out)
            if point is None:
                log(f"{tag}: half-finished (killed?), no checkpoint of this recipe: starting it again")
                shutil.rmtree(folder)
            else:
                where = "trained, evaluating it" if point == TRAINED else f"resuming its training at step {point}"
                log(f"{tag}: half-finished (killed?), {where}")
                for path in folder.iterdir():  # what the killed evaluation left; the run stays
                    if path.name != "run":
                        shutil.rmtree(path) if path.is_dir() else path.unlink()
        todo.append(cell)

    def started(cell: Cell) -> None:
        source = study.source_cell(cell)
        steps = study.train_config(cell, "").steps
        log(
            f"[{number[cell.key]}/{len(cells)}] {cell.key}: training {steps} steps"
            + (f" from {source.key}" if source else "")
        )

    def finished(cell: Cell, r: CellResult) -> None:
        done[cell.key] = r
        log(
            f"[{number[cell.key]}/{len(cells)}] {cell.key}: success {r.success_rate:.3f} ({r.successes}/{r.episodes}), "
            f"train {r.train_s:.0f} s, eval {r.eval_s:.0f} s"
        )
        write_study_report(study, out, done)

    if workers == 1 or len(todo) <= 1:
        for cell in todo:
            started(cell)
            finished(cell, run_cell(study, cell, out, progress))
    else:
        _run_in_workers(study, out, todo, done, workers, started, finished)
    if not todo:
        write_study_report(study, out, done)  # nothing ran in this call: render what there is
    return done


def _run_in_workers(
    study: Study,
    out: Path,
    todo: list[Cell],
    done: dict[str, CellResult],
    workers: int,
    started: Callable[[Cell], None],
    finished: Callable[[Cell, CellResult], None],
) -> None:
    """Run ``todo`` in ``workers`` spawned processes, in order, each cell once its source is done.
    A failing cell stops new starts; the running ones finish (and are kept), then it is raised."""
    from ..threads import available_cores

    threads = max(1, available_cores() // workers)
    waiting, running = list(todo), {}  # running: future -> cell
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        error: BaseException | None = None
        while waiting or running:
            if error is None:
                for cell in [c for c in waiting if _ready(study, c, done)][: workers - len(running)]:
                    waiting.remove(cell)
                    started(cell)
                    running[pool.submit(_run_cell_in_worker, study, cell, out, threads)] = cell
            if not running:
                break
            finished_now, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished_now:
                cell = running.pop(future)
                if future.exception() is not None:
                    error = error or future.exception()
                else:
                    finished(cell, future.result())
        if error is not None:
            raise error


def _ready(study: Study, cell: Cell, done: dict[str, CellResult]) -> bool:
    source = study.source_cell(cell)
    return source is None or source.key in done


def _run_cell_in_worker(study: Study, cell: Cell, out: Path, threads: int) -> CellResult:
    """One cell in a worker process: no progress bars, ``threads`` torch threads unless the
    study's ``train.threads`` says otherwise."""
    import torch

    torch.set_num_threads(threads)
    return run_cell(study, cell, out, progress=False, threads=threads)


TRAINED = -1
""":func:`resume_point` of a cell whose training finished (its evaluation was cut)."""


def resume_point(study: Study, cell: Cell, out: Path) -> int | None:
    """Where a half-finished cell's run can go on: the step of its newest checkpoint, ``TRAINED``
    when its model is saved, or None (no run, no checkpoint, or a run of another recipe: the study
    file was edited since)."""
    from ..training.setup import resumed_config

    cfg = cell_train_config(study, cell, out)
    run = RunDir(cfg.output_dir)
    try:
        data = run.read_config()
        if data is None:
            return None
        saved = TrainConfig.from_run_dict(data, str(run.config))
        resumed_config(saved, cfg, str(run.root))  # RunDirError: optimises something else
        if saved.steps != cfg.steps:  # a longer or shorter schedule is another recipe here
            return None
        summary = run.read_summary()
        if summary is not None and summary.get("steps") == cfg.steps and (run.model / MODEL_CONFIG).is_file():
            return TRAINED
        checkpoint = run.latest_checkpoint() or run.newest_intact_checkpoint()
    except (ModePolicyError, OSError, ValueError):
        return None
    return None if checkpoint is None else int(checkpoint.name.removeprefix(CHECKPOINT_PREFIX))


def _logged_train_seconds(run: RunDir, up_to_step: int | None = None) -> float:
    """Seconds of training the run's metrics record (every part of a resumed run: its ``wall_s``
    restarts from 0 in each part), counting records up to ``up_to_step`` (default: all)."""
    total, last = 0.0, 0.0
    for record in run.read_metrics():
        if up_to_step is not None and record.get("step", 0) > up_to_step:
            break
        wall = float(record.get("wall_s", 0.0))
        if wall < last:  # a new part began
            total += last
        last = wall
    return total + last


def run_cell(study: Study, cell: Cell, out: Path, progress: bool, threads: int = 0) -> CellResult:
    """Train the cell's policy (or go on with a killed cell's run, see :func:`resume_point`),
    evaluate it on the study's held-out episodes, record the result in the cell's folder under
    ``out``; ``threads`` > 0: the torch threads of a training run whose study leaves
    ``train.threads`` at 0 (auto). ``train_s`` counts every part of a resumed run."""
    from ..evaluation.metaworld import evaluate_metaworld
    from ..policy import MoDEPolicy
    from ..training.loop import train

    folder = cell_dir(out, cell)
    cfg = cell_train_config(study, cell, out)
    cfg.progress = progress and cfg.progress
    if threads and not cfg.threads:
        cfg.threads = threads
    point = resume_point(study, cell, out) if folder.exists() else None
    run = RunDir(cfg.output_dir)
    if point == TRAINED:
        train_s = _logged_train_seconds(run)
    else:
        earlier = 0.0 if point is None else _logged_train_seconds(run, point)
        start = time.perf_counter()
        run = RunDir(train(cfg, resume=point is not None))
        train_s = earlier + time.perf_counter() - start
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
