"""The ``study`` sub-command: train and evaluate a grid of variants x seeds, resumably."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..fileio import Outputs
from .command import Command


@dataclass
class StudyOptions:
    """Train and evaluate every variant x seed of a study file, one cell after another (or
    ``--workers`` at once); a killed study resumes (finished cells are skipped, a half-finished one goes
    on from its newest checkpoint)."""

    study: str = ""
    """The study file (YAML; first positional argument). See mode_policy.study.spec for its keys."""
    out: str = ""
    """Folder of the study: cells/, study.json, report.md and study.png."""
    report_only: bool = False
    """Only rewrite report.md and study.png from the cells finished so far."""
    progress: bool = True
    """Show training and evaluation progress bars (one cell at a time only)."""
    workers: int = 1
    """Cells trained at once, each in its own process with an equal share of the cores as torch
    threads (unless the study's ``train.threads`` sets them)."""
    overwrite: bool = False
    """Write into an ``out`` folder that is not a study's but holds files of the names a study
    writes (study.json, report.md, study.png, cells/). A study's own folder is always resumed."""


def _is_study_folder(folder: Path) -> bool:
    from ..study.runner import STUDY_LOCK, STUDY_RECORD

    return (folder / STUDY_RECORD).is_file() or {p.name for p in folder.iterdir()} <= {STUDY_LOCK}


def run_study_command(opts: StudyOptions) -> int:
    from ..study import finished_results, load_study, run_study, write_study_report
    from ..study.report import FIGURE_NAME, REPORT_NAME
    from ..study.runner import STUDY_RECORD

    if not opts.study or not opts.out:
        raise ConfigError("study needs a study file and --out: `mode-policy study STUDY.yaml --out DIR`")
    out = Path(opts.out)
    if out.exists() and not out.is_dir():  # before reading the study: its dataset may be large
        raise ConfigError(f"--out {out} is a file, not a folder (a study writes a folder)")
    study = load_study(opts.study)
    inputs = [study.path, study.dataset, *(v.dataset for v in study.variants if v.dataset)]
    inputs += [v.init_from for v in study.variants if v.init_from and not v.init_from_variant]
    outputs = Outputs(opts.overwrite, inputs)
    names = (REPORT_NAME, FIGURE_NAME) if opts.report_only else (STUDY_RECORD, REPORT_NAME, FIGURE_NAME, "cells")
    outputs.folder(out, what="the study folder", names=names, own=_is_study_folder, default=True)
    if opts.report_only:
        report = write_study_report(study, out, finished_results(study, out))
    else:
        run_study(study, out, progress=opts.progress, workers=opts.workers)
        report = out / "report.md"
    print(f"report: {report}")
    return 0


COMMANDS = {
    "study": Command(
        StudyOptions,
        run_study_command,
        "train and evaluate a grid of variants x seeds (resumable)",
        positional=("study",),
    ),
}
